//! dnsd: the resolver for container names, aliases and bindings, and the /etc/hosts and /etc/resolv.conf writers (issue 5).
