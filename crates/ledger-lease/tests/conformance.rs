//! Runs the `LeaseStore` conformance suite from `test-support` against both backends:
//! SQLite in a temp file, and PostgreSQL started from the Debian package (skipped with a
//! message when it is not installed, unless `TAKHIN_REQUIRE_ALL_CLIENTS=1`).

mod sqlite {
    test_support::lease_store_conformance!(test_support::lease_backend::sqlite);
}

mod postgres {
    test_support::lease_store_conformance!(test_support::lease_backend::postgres);
}
