package loader

import (
	"net/netip"

	"github.com/sluicelb/sluice/loader/internal/layout"
)

// FlowHash is the data plane's hash of a flow (src → dst over proto)
// under the configured seed: a new flow takes ring slot FlowHash % ring
// size (or the next usable one). Tools and tests use it to say which
// backend a connection goes to.
func FlowHash(src, dst netip.AddrPort, proto Proto, seed uint32) uint32 {
	ports := uint32(layout.Htons(src.Port()))<<16 | uint32(layout.Htons(dst.Port()))
	s, d := layout.Words(src.Addr()), layout.Words(dst.Addr())
	if src.Addr().Is4() {
		return jhash3(s[0], d[0], ports, seed^uint32(proto))
	}
	h := jhash4(s, seed)
	h = jhash4(d, h)
	return jhash3(ports, uint32(proto), 0, h)
}

// HashSeed is the 32-bit flow-hash seed the data plane gets from the
// daemon's 64-bit --seed.
func HashSeed(seed uint64) uint32 { return uint32(seed ^ seed>>32) }
