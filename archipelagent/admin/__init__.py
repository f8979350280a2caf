"""``archipel-admin``: the admin CLI, talking to a running agent over XMPP (see :mod:`.cli`)."""
