package io.vkprovider.e2e.base;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RestController;

/**
 * Minimal Koupleless base for vkprovider's e2e tests: a Spring Boot web app carrying sofa-ark + arklet.
 * Bizs (ark-biz jars) are installed into it through the arklet HTTP API or the MQTT tunnel.
 */
@SpringBootApplication
@RestController
public class BaseApplication {

    public static void main(String[] args) {
        SpringApplication.run(BaseApplication.class, args);
    }

    /** GET / : which base answered (handy when several bases run on one host). */
    @GetMapping("/")
    public String whoami() {
        return PropertyBaseMetadataHook.describe() + "\n";
    }
}
