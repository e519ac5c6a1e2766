pytest_plugins = ["_db_fixtures", "coordinator_process"]
