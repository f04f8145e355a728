// Package e2e tests the sluice binary end to end: it builds cmd/sluice,
// runs daemons in the lab's network namespaces, drives them through the
// CLI and checks what clients and backends see. It has no code of its own
// outside its tests.
package e2e
