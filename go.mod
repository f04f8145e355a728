module github.com/sluicelb/sluice

go 1.26

require (
	github.com/cilium/ebpf v0.22.0
	golang.org/x/sys v0.45.0
)

require (
	github.com/gopacket/gopacket v1.7.7 // indirect
	github.com/safchain/ethtool v0.7.0 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	pgregory.net/rapid v1.3.0 // indirect
)

tool github.com/cilium/ebpf/cmd/bpf2go
