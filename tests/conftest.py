pytest_plugins = ["_db_fixtures"]
