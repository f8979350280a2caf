"""Host networking of a hypervisor (bond + tagged VLANs on bridges): declaration, rendering, offline check."""
