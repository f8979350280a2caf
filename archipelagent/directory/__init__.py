"""Who people are: the campus LDAP directory, resolved with ldap3."""
from archipelagent.directory.ldap import Directory, DirectoryUnavailable, DirectoryUser

__all__ = ["Directory", "DirectoryUnavailable", "DirectoryUser"]
