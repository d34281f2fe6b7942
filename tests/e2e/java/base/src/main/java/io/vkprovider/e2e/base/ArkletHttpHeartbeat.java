package io.vkprovider.e2e.base;

import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.time.Duration;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.TimeUnit;

import jakarta.annotation.PreDestroy;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.boot.context.event.ApplicationReadyEvent;
import org.springframework.context.event.EventListener;
import org.springframework.stereotype.Component;

/**
 * Stand-in for arklet 2.1.7+'s built-in HTTP heartbeat, which koupleless 2.1.6 (the newest release on Maven Central)
 * does not have. When the system property {@code koupleless.arklet.http.heartbeat.endpoint} is set, it POSTs
 * {@code <endpoint>/heartbeat} once when the base is ready and then every 12 s, with {@code Content-Type:
 * application/json} and exactly arklet 2.1.11's body (keys sorted):
 *
 * <pre>
 * {"baseMetadata":{"clusterName":..,"identity":..,"name":..,"version":..},"localHostName":..,"localIP":..,
 *  "port":&lt;koupleless.arklet.http.port&gt;,"state":"activated"}
 * </pre>
 *
 * The values come from {@link PropertyBaseMetadataHook}, the same source arklet uses for the base's metadata. Only the
 * JDK's {@link HttpClient}; failures are logged and the next beat is tried as usual (like arklet).
 */
@Component
public class ArkletHttpHeartbeat {

    static final String ENDPOINT_PROPERTY = "koupleless.arklet.http.heartbeat.endpoint";
    static final String ARKLET_PORT_PROPERTY = "koupleless.arklet.http.port";
    static final int DEFAULT_ARKLET_PORT = 1238;
    static final long INTERVAL_MS = 12_000;

    private static final Logger LOG = LoggerFactory.getLogger(ArkletHttpHeartbeat.class);

    private final PropertyBaseMetadataHook metadata = new PropertyBaseMetadataHook();
    private ScheduledExecutorService scheduler;
    private HttpClient client;
    private URI uri;

    @EventListener(ApplicationReadyEvent.class)
    public synchronized void start() {
        String endpoint = System.getProperty(ENDPOINT_PROPERTY);
        if (endpoint == null || endpoint.isBlank() || scheduler != null) {
            return;
        }
        String base = endpoint.trim();
        while (base.endsWith("/")) {
            base = base.substring(0, base.length() - 1);
        }
        uri = URI.create(base + "/heartbeat");
        client = HttpClient.newBuilder()
            .version(HttpClient.Version.HTTP_1_1) // no h2c upgrade headers: arklet sends plain HTTP/1.1
            .connectTimeout(Duration.ofSeconds(3))
            .build();
        scheduler = Executors.newSingleThreadScheduledExecutor(r -> {
            Thread t = new Thread(r, "arklet-http-heartbeat");
            t.setDaemon(true);
            return t;
        });
        LOG.info("arklet http heartbeat to {} every {} ms", uri, INTERVAL_MS);
        scheduler.scheduleAtFixedRate(this::beat, 0, INTERVAL_MS, TimeUnit.MILLISECONDS);
    }

    @PreDestroy
    public synchronized void stop() {
        if (scheduler != null) {
            scheduler.shutdownNow();
            scheduler = null;
        }
    }

    private void beat() {
        try {
            HttpRequest req = HttpRequest.newBuilder(uri)
                .timeout(Duration.ofSeconds(5))
                .header("Content-Type", "application/json")
                .POST(HttpRequest.BodyPublishers.ofString(body()))
                .build();
            HttpResponse<String> resp = client.send(req, HttpResponse.BodyHandlers.ofString());
            if (resp.statusCode() / 100 != 2) {
                LOG.warn("heartbeat to {} answered {}: {}", uri, resp.statusCode(), resp.body());
            }
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        } catch (Exception e) {
            LOG.warn("heartbeat to {} failed: {}", uri, e.toString());
        }
    }

    /** arklet 2.1.11's heartbeat body, keys sorted as fastjson2 writes them. */
    String body() {
        return "{\"baseMetadata\":{"
               + "\"clusterName\":" + str(metadata.getClusterName())
               + ",\"identity\":" + str(metadata.getIdentity())
               + ",\"name\":" + str(metadata.getName())
               + ",\"version\":" + str(metadata.getVersion())
               + "},\"localHostName\":" + str(metadata.getLocalHostName())
               + ",\"localIP\":" + str(metadata.getLocalIP())
               + ",\"port\":" + arkletPort()
               + ",\"state\":\"activated\"}";
    }

    static int arkletPort() {
        String p = System.getProperty(ARKLET_PORT_PROPERTY);
        try {
            return p == null || p.isBlank() ? DEFAULT_ARKLET_PORT : Integer.parseInt(p.trim());
        } catch (NumberFormatException e) {
            return DEFAULT_ARKLET_PORT;
        }
    }

    static String str(String s) {
        if (s == null) {
            return "null";
        }
        StringBuilder b = new StringBuilder(s.length() + 2).append('"');
        for (int i = 0; i < s.length(); i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': b.append("\\\""); break;
                case '\\': b.append("\\\\"); break;
                case '\n': b.append("\\n"); break;
                case '\r': b.append("\\r"); break;
                case '\t': b.append("\\t"); break;
                default:
                    if (c < 0x20) {
                        b.append(String.format("\\u%04x", (int) c));
                    } else {
                        b.append(c);
                    }
            }
        }
        return b.append('"').toString();
    }
}
