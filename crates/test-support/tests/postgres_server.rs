//! Tests the PostgreSQL harness itself: it starts a usable server on loopback that is not
//! running as root, and on drop stops it and removes its temp dir.

use std::time::Duration;

use sqlx::Connection as _;
use test_support::postgres::PostgresServer;
use test_support::skip_unless_required;

#[tokio::test]
async fn starts_a_usable_server_and_stops_it_on_drop() {
    let Some(server) = skip_unless_required("postgres_server", PostgresServer::start()) else {
        return;
    };
    let url = server.url().to_owned();
    assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&mut conn)
        .await
        .expect("version");
    assert!(version >= 140_000, "server version {version}");
    let data_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(&mut conn)
        .await
        .expect("data dir");
    assert!(
        data_dir.starts_with(&*server.dir().to_string_lossy()),
        "{data_dir}"
    );
    conn.close().await.expect("close");

    let dir = server.dir().to_owned();
    let port = server.port();
    drop(server);
    assert!(!dir.exists(), "temp dir {dir:?} left behind");
    let connect =
        tokio::time::timeout(Duration::from_secs(2), sqlx::PgConnection::connect(&url)).await;
    assert!(
        !matches!(connect, Ok(Ok(_))),
        "server on port {port} still accepts connections after drop"
    );
}

#[test]
fn two_servers_run_side_by_side() {
    let Some(first) = skip_unless_required("two_servers", PostgresServer::start()) else {
        return;
    };
    let second = PostgresServer::start().expect("second server");
    assert_ne!(first.port(), second.port());
}
