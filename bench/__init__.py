"""The tornadoproxy benchmark (not a test): run it with ./bench/run; see bench/README.md."""
