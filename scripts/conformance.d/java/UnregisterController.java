// Kafka's Admin.unregisterController (UnregisterController, API 94) for
// scripts/conformance.d/java/run.py. Prints "unregistered ID" or the
// exception class the call failed with, and its message.
//
// Usage: UnregisterController BOOTSTRAP ID
import java.util.Properties;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;

public final class UnregisterController {
    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        int id = Integer.parseInt(args[1]);
        try (Admin admin = Admin.create(p)) {
            admin.unregisterController(id).all().get();
            System.out.println("unregistered " + id);
        } catch (ExecutionException e) {
            Throwable c = e.getCause();
            System.out.println(c.getClass().getSimpleName() + ": " + c.getMessage());
        }
    }
}
