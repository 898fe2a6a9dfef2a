//! The real engines the remote-store tests run on: a SeaweedFS bucket (`HOARD_TEST_BUCKET` and
//! the `AWS_*` variables) and a PostgreSQL server (`HOARD_TEST_INDEX`), both on loopback,
//! started and stopped by `.ci/remote.sh`. Without them, `cargo test` skips those tests with a
//! one-line message. Each test gets a bucket prefix and a database of its own, so tests running
//! at once never see each other's records.

use hoard::Hash;

/// A fresh `s3://BUCKET/PREFIX` in the test bucket, or `None` (with a message) when no engines
/// are given.
pub fn bucket(test: &str) -> Option<String> {
    let Ok(bucket) = std::env::var("HOARD_TEST_BUCKET") else {
        eprintln!("HOARD_TEST_BUCKET not set: skipping {test} (.ci/remote.sh runs it)");
        return None;
    };
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
    assert!(
        endpoint.starts_with("http://127.") || endpoint.starts_with("http://[::1]"),
        "tests only touch loopback, not {endpoint:?}"
    );
    Some(format!(
        "{bucket}/{}",
        &Hash::fresh(test.as_bytes()).to_hex()[..20]
    ))
}

/// The URL of a new, empty database on the test PostgreSQL server, or `None` (with a message)
/// when no engines are given.
pub fn index(test: &str) -> Option<String> {
    let Ok(url) = std::env::var("HOARD_TEST_INDEX") else {
        eprintln!("HOARD_TEST_INDEX not set: skipping {test} (.ci/remote.sh runs it)");
        return None;
    };
    assert!(
        url.contains("@127.") || url.contains("@[::1]") || url.contains("@localhost"),
        "tests only touch loopback, not {url:?}"
    );
    let name = format!("t_{}", &Hash::fresh(test.as_bytes()).to_hex()[..20]);
    sql(&url, &format!("CREATE DATABASE {name}"));
    let (server, _) = url.rsplit_once('/').expect("a database in the URL");
    Some(format!("{server}/{name}"))
}

/// Runs `statements` on the database at `url`, as a test's own client (not hoard's).
pub fn sql(url: &str, statements: &str) {
    on_db(url, async |c| c.batch_execute(statements).await.unwrap());
}

/// The first column of the first row `query` answers on the database at `url`, as text.
pub fn sql_value(url: &str, query: &str) -> String {
    let rows = on_db(url, async |c| c.simple_query(query).await.unwrap());
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

/// Runs `f` with a connection of its own to the database at `url`, then closes it.
fn on_db<T>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        let out = f(&client).await;
        drop(client);
        let _ = conn.await;
        out
    })
}
