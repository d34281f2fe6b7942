package io.vkprovider.e2e.broken;

import jakarta.annotation.PostConstruct;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.boot.builder.SpringApplicationBuilder;
import org.springframework.core.io.DefaultResourceLoader;
import org.springframework.stereotype.Component;

/** A biz whose start always fails: a bean throws while the biz's Spring context starts. */
@SpringBootApplication
public class BrokenApplication {

    public static void main(String[] args) {
        new SpringApplicationBuilder(BrokenApplication.class)
            .resourceLoader(new DefaultResourceLoader(BrokenApplication.class.getClassLoader()))
            .build().run(args);
    }

    @Component
    static class Saboteur {
        @PostConstruct
        void explode() {
            throw new IllegalStateException("broken biz: start fails on purpose (vkprovider e2e)");
        }
    }
}
