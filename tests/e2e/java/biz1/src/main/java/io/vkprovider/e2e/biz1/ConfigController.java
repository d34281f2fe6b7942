package io.vkprovider.e2e.biz1;

import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

import org.springframework.core.env.Environment;
import org.springframework.web.bind.annotation.GetMapping;
import org.springframework.web.bind.annotation.RequestParam;
import org.springframework.web.bind.annotation.RestController;

/**
 * GET /biz1/config?names=A,B: what this biz was started with, for the e2e test of installBiz "args" and "envs"
 * (docs/protocol.md): the arguments its main() got, and for each name the value the biz can see as a process
 * environment variable (System.getenv), a system property (System.getProperty) and a property of its Spring
 * Environment (which also holds --name=value arguments). A value nobody set is JSON null.
 */
@RestController
public class ConfigController {

    private final Environment environment;

    public ConfigController(Environment environment) {
        this.environment = environment;
    }

    @GetMapping("/config")
    public Map<String, Object> config(@RequestParam(name = "names", defaultValue = "") List<String> names) {
        Map<String, Object> env = new LinkedHashMap<>();
        Map<String, Object> properties = new LinkedHashMap<>();
        Map<String, Object> spring = new LinkedHashMap<>();
        for (String name : names) {
            if (name.isEmpty()) {
                continue;
            }
            env.put(name, System.getenv(name));
            properties.put(name, System.getProperty(name));
            spring.put(name, environment.getProperty(name));
        }
        Map<String, Object> answer = new LinkedHashMap<>();
        answer.put("args", Biz1Application.mainArgs);
        answer.put("env", env);
        answer.put("systemProperties", properties);
        answer.put("spring", spring);
        return answer;
    }
}
