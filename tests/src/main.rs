mod postgres_store;
mod postgres_test_db;
