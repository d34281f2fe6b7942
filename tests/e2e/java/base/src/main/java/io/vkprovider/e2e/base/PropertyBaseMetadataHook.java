package io.vkprovider.e2e.base;

import java.net.Inet4Address;
import java.net.InetAddress;
import java.net.NetworkInterface;
import java.net.SocketException;
import java.util.Enumeration;

import com.alipay.sofa.koupleless.arklet.core.common.model.BaseMetadata;
import com.alipay.sofa.koupleless.arklet.core.hook.base.BaseMetadataHook;

/**
 * Base metadata taken from JVM system properties (falling back to environment variables), so that several bases on
 * one host get distinct identities. Select it with
 * {@code -Dkoupleless.arklet.custom.base.metadata.classname=io.vkprovider.e2e.base.PropertyBaseMetadataHook}.
 *
 * <p>koupleless 2.1.6's {@link BaseMetadataHook} only has {@code getBaseMetadata()} (name + version) and
 * {@code getRuntimeEnv()}; identity, cluster, IP and host name are arklet 2.1.7+ notions. They are kept here as plain
 * methods because {@link ArkletHttpHeartbeat} (our stand-in for 2.1.7+'s HTTP heartbeat) sends them.
 *
 * <pre>
 *   property          env              default
 *   base.identity     BASE_IDENTITY    first non-loopback IPv4 address, else the host name
 *   base.name         BASE_NAME        base
 *   base.version      BASE_VERSION     1.0.0
 *   base.cluster      BASE_CLUSTER     default
 *   base.env          BASE_ENV         default    (MQTT topics are koupleless_{env}/...)
 *   base.ip           BASE_IP          first non-loopback IPv4 address, else 127.0.0.1
 *   base.hostname     BASE_HOSTNAME    local host name
 * </pre>
 */
public class PropertyBaseMetadataHook implements BaseMetadataHook {

    private static String prop(String key, String fallback) {
        String v = System.getProperty(key);
        if (v == null || v.isEmpty()) {
            v = System.getenv(key.toUpperCase().replace('.', '_'));
        }
        return v == null || v.isEmpty() ? fallback : v;
    }

    private static String firstIPv4() {
        try {
            Enumeration<NetworkInterface> nics = NetworkInterface.getNetworkInterfaces();
            while (nics != null && nics.hasMoreElements()) {
                Enumeration<InetAddress> addrs = nics.nextElement().getInetAddresses();
                while (addrs.hasMoreElements()) {
                    InetAddress a = addrs.nextElement();
                    if (a instanceof Inet4Address && !a.isLoopbackAddress()) {
                        return a.getHostAddress();
                    }
                }
            }
        } catch (SocketException ignored) {
            // fall through
        }
        return null;
    }

    private static String hostName() {
        try {
            return InetAddress.getLocalHost().getHostName();
        } catch (Exception e) {
            return "localhost";
        }
    }

    @Override
    public BaseMetadata getBaseMetadata() {
        return new BaseMetadata(getName(), getVersion());
    }

    public String getIdentity() {
        String ip = firstIPv4();
        return prop("base.identity", ip != null ? ip : hostName());
    }

    public String getName() {
        return prop("base.name", "base");
    }

    public String getVersion() {
        return prop("base.version", "1.0.0");
    }

    public String getClusterName() {
        return prop("base.cluster", "default");
    }

    @Override
    public String getRuntimeEnv() {
        return prop("base.env", "default");
    }

    public String getLocalIP() {
        String ip = firstIPv4();
        return prop("base.ip", ip != null ? ip : "127.0.0.1");
    }

    public String getLocalHostName() {
        return prop("base.hostname", hostName());
    }

    static String describe() {
        PropertyBaseMetadataHook h = new PropertyBaseMetadataHook();
        return "identity=" + h.getIdentity() + " name=" + h.getName() + " version=" + h.getVersion()
               + " cluster=" + h.getClusterName() + " env=" + h.getRuntimeEnv();
    }
}
