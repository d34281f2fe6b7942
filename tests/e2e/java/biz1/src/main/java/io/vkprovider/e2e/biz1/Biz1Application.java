package io.vkprovider.e2e.biz1;

import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.builder.SpringApplicationBuilder;
import org.springframework.core.io.DefaultResourceLoader;

/** biz1: started by sofa-ark inside the base (main() runs with the biz class loader). */
@SpringBootApplication
public class Biz1Application {

    public static void main(String[] args) {
        new SpringApplicationBuilder(Biz1Application.class)
            // resources (application.properties) from the biz's own class loader
            .resourceLoader(new DefaultResourceLoader(Biz1Application.class.getClassLoader()))
            .build().run(args);
    }
}
