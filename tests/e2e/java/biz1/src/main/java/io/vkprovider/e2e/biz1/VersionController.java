package io.vkprovider.e2e.biz1;

import com.alipay.sofa.ark.api.ArkClient;
import com.alipay.sofa.ark.spi.model.Biz;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RestController;

/** Served under the biz's web context path: GET /biz1/version, GET /biz1/ . */
@RestController
public class VersionController {

    private static Biz self() {
        try {
            return ArkClient.getBizManagerService().getBizByClassLoader(
                VersionController.class.getClassLoader());
        } catch (Throwable t) {
            return null;
        }
    }

    /** The Ark-Biz-Version of the biz that serves the request, e.g. 0.0.1. */
    @GetMapping("/version")
    public String version() {
        Biz b = self();
        return b == null ? "unknown" : b.getBizVersion();
    }

    @GetMapping("/")
    public String hello() {
        Biz b = self();
        return b == null ? "biz1" : b.getIdentity();
    }
}
