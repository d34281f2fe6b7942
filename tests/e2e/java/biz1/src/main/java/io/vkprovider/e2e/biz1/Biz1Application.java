package io.vkprovider.e2e.biz1;

import java.util.Arrays;
import java.util.Collections;
import java.util.List;

import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.builder.SpringApplicationBuilder;
import org.springframework.core.io.DefaultResourceLoader;

/** biz1: started by sofa-ark inside the base (main() runs with the biz class loader). */
@SpringBootApplication
public class Biz1Application {

    /** The arguments main() was called with: what arklet's installBiz "args" became (GET /biz1/config). */
    static volatile List<String> mainArgs = Collections.emptyList();

    public static void main(String[] args) {
        mainArgs = args == null ? null : List.copyOf(Arrays.asList(args));
        new SpringApplicationBuilder(Biz1Application.class)
            // resources (application.properties) from the biz's own class loader
            .resourceLoader(new DefaultResourceLoader(Biz1Application.class.getClassLoader()))
            .build().run(args);
    }
}
