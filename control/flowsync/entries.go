package flowsync

import (
	"net/netip"

	"github.com/sluicelb/sluice/loader"
)

// Entries turns data-plane flows into synced entries: each backend index
// becomes its address (indexes differ between nodes).
func Entries(addrs map[uint32]netip.Addr, flows []loader.Flow) []FlowEntry {
	out := make([]FlowEntry, 0, len(flows))
	for _, f := range flows {
		addr, ok := addrs[f.Backend]
		if !ok {
			continue
		}
		out = append(out, FlowEntry{Src: f.Src, Dst: f.Dst, Proto: uint8(f.Proto), Backend: addr})
	}
	return out
}

// Logger is what Apply logs to.
type Logger interface {
	Warn(msg string, args ...any)
}

// Apply writes synced entries with this node's backend indexes; an entry
// for a backend this node does not know is skipped and counted.
func Apply(host Host, dp Datapath, fs []FlowEntry, log Logger) (applied, unknown int) {
	now := loader.MonotonicCoarseNow()
	for _, f := range fs {
		idx, ok := host.FlowBackend(f.Dst, loader.Proto(f.Proto), f.Backend)
		if !ok {
			unknown++
			continue
		}
		if err := dp.SetFlow(loader.Flow{Src: f.Src, Dst: f.Dst, Proto: loader.Proto(f.Proto), Backend: idx, LastSeenNano: now}); err != nil {
			log.Warn("write synced flow", "err", err)
			unknown++
			continue
		}
		applied++
	}
	return applied, unknown
}
