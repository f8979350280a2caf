"""More ejabberd nodes joined to the rig's ejabberd in one cluster (docs/CLUSTER.md).

ejabberd clusters natively: Erlang distribution between the nodes and Mnesia
tables (accounts, rosters, pubsub, vCards, sessions) shared by them, one XMPP
domain.  The rig's nodes share every port number, each on its own loopback
address (node k >= 2 on 127.0.0.k, named ``<name>@archipel-ej<k>``, a name every
node's inetrc maps to that address), because the distribution runs without
epmd: a node reaches another at the other's address and the one common port.

    cluster = Cluster(stack)
    node2 = cluster.add_node(2)           # started fresh, then join_cluster
    ...                                   # clients on 127.0.0.2:<c2s port>
    cluster.remove_node(node2)            # stopped, then leave_cluster from node 1
"""
from __future__ import annotations

import time

from .ejabberd import MAX_EXTRA_NODES, Ejabberd, EjabberdError, cluster_host
from .util import log, wait_until


class Cluster:
    """The extra nodes of one rig stack's ejabberd cluster."""

    def __init__(self, stack):
        self.stack = stack
        self.nodes: dict[int, Ejabberd] = {}

    @property
    def first(self) -> Ejabberd:
        return self.stack.ejabberd

    def node_name(self, k: int) -> str:
        return f"{self.first.node.split('@', 1)[0]}@{cluster_host(k)}"

    def make_node(self, k: int) -> Ejabberd:
        """Node ``k`` (2 .. 1 + MAX_EXTRA_NODES) configured like the first, on 127.0.0.k."""
        if not 2 <= k <= 1 + MAX_EXTRA_NODES:
            raise ValueError(f"cluster node {k}: 2 .. {1 + MAX_EXTRA_NODES}")
        first = self.first
        return Ejabberd(self.stack.state_dir / f"ejabberd-node{k}", domain=first.domain,
                        pubsub_domain=first.pubsub_domain, c2s_port=first.c2s_port,
                        http_port=first.http_port, dist_port=first.dist_port, node=self.node_name(k),
                        ldap=first.ldap, admin_jid=first.admin_jid, cert_pem_source=first.cert_pem_source,
                        loglevel=first.loglevel, listen_ip=f"127.0.0.{k}", s2s_port=first.s2s_port,
                        dns_port=first.dns_port, ca_pem_source=first.ca_pem_source)

    def add_node(self, k: int = 2) -> Ejabberd:
        """Start node ``k`` with an empty spool and join it to the first node's cluster."""
        t0 = time.monotonic()
        node = self.nodes.get(k) or self.make_node(k)
        node.start(fresh=True)
        self.nodes[k] = node
        res = node.ctl_run("join_cluster", self.first.node, check=False, timeout=120)
        if res.returncode != 0:
            raise EjabberdError(f"join_cluster {self.first.node} from {node.node} failed: "
                                f"{(res.stdout or '')}{(res.stderr or '')}".strip())
        # join_cluster restarts ejabberd on the joining node: wait until it serves again
        wait_until(lambda: self.members() >= {self.first.node, node.node} and node._api_started(),
                   120, f"ejabberd node {node.node} in the cluster")
        log.info("cluster: %s joined %s in %.2fs", node.node, self.first.node, time.monotonic() - t0)
        return node

    def members(self, via: Ejabberd | None = None) -> set[str]:
        """The running nodes of the cluster, as ``via`` (default: the first node) sees them."""
        try:
            res = (via or self.first).api("list_cluster", timeout=10)
        except (OSError, EjabberdError, ValueError):
            return set()
        return {str(n) for n in (res or [])}

    def stop_node(self, k: int) -> None:
        """Stop node ``k`` (it stays a member: restart it with ``restart_node``)."""
        self.nodes[k].stop()

    def restart_node(self, k: int) -> float:
        """Start node ``k`` again keeping its spool (it rejoins by itself)."""
        return self.nodes[k].start(fresh=False)

    def remove_node(self, node: Ejabberd | int) -> None:
        """Stop the node, remove it from the cluster (leave_cluster, run on the first node)
        and delete its state, so the first node restarts alone afterwards."""
        k = node if isinstance(node, int) else next(i for i, n in self.nodes.items() if n is node)
        node = self.nodes.pop(k)
        node.stop()
        res = self.first.ctl_run("leave_cluster", node.node, check=False, timeout=120)
        if res.returncode != 0 and node.node in self.members():
            raise EjabberdError(f"leave_cluster {node.node} failed: {(res.stdout or '')}{(res.stderr or '')}")
        node.purge()

    def stop(self) -> None:
        for k in list(self.nodes):
            self.remove_node(k)
