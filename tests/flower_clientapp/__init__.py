"""A Flower app as `flwr new` lays one out (task.py, client_app.py): no Cohort imports."""
