// What DBeaver, Metabase and other JDBC tools do first with a PostgreSQL
// server: product and version, the tables and their columns through
// DatabaseMetaData, then a prepared statement with a bound parameter.
// Prints one tab-separated line per fact; run by tests/suite/sql.rs as
// `java -cp postgresql.jar JdbcClient.java PORT PASSWORD SEGMENT`.
import java.sql.Connection;
import java.sql.DatabaseMetaData;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.util.Properties;

public class JdbcClient {
    public static void main(String[] args) throws Exception {
        String url = "jdbc:postgresql://127.0.0.1:" + args[0] + "/segments?sslmode=disable";
        Properties props = new Properties();
        props.setProperty("user", "segments");
        props.setProperty("password", args[1]);
        try (Connection c = DriverManager.getConnection(url, props)) {
            DatabaseMetaData m = c.getMetaData();
            System.out.println("product\t" + m.getDatabaseProductName() + "\t" + m.getDatabaseProductVersion());
            try (ResultSet r = m.getTables(null, null, "%", new String[] {"TABLE", "VIEW"})) {
                while (r.next()) {
                    System.out.println("table\t" + r.getString("TABLE_SCHEM") + "\t"
                            + r.getString("TABLE_NAME") + "\t" + r.getString("TABLE_TYPE"));
                }
            }
            try (ResultSet r = m.getColumns(null, "public", "contacts", "%")) {
                while (r.next()) {
                    System.out.println("column\t" + r.getString("COLUMN_NAME") + "\t"
                            + r.getString("TYPE_NAME") + "\t" + r.getInt("DATA_TYPE"));
                }
            }
            String sql = "SELECT count(*) FROM contacts WHERE in_segment(contact_id, ?)";
            try (PreparedStatement s = c.prepareStatement(sql)) {
                s.setString(1, args[2]);
                try (ResultSet r = s.executeQuery()) {
                    r.next();
                    System.out.println("members\t" + r.getLong(1));
                }
            }
            try (PreparedStatement s = c.prepareStatement(
                    "SELECT contact_id FROM contacts WHERE score > ? ORDER BY contact_id DESC")) {
                s.setLong(1, 50);
                try (ResultSet r = s.executeQuery()) {
                    while (r.next()) {
                        System.out.println("id\t" + r.getLong(1));
                    }
                }
            }
        }
    }
}
