mod postgres_store;
mod postgres_test_db;
mod store_conformance;
