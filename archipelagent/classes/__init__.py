"""Classes (issue 14): the database (``store``) and leases on the scheduler (``leases``); the commands are in ``modules/classes.py``."""
