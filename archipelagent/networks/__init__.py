"""Networks: the policy of a non-admin's <network>, the shared catalogue, class switches (VXLAN), rights (docs/NETWORKS.md)."""
