"""Virtual machines as Jabber entities: the entity, its presence, its commands."""
