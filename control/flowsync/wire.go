package flowsync

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/sluicelb/sluice/control/peer"
)

// FlowEntry is one synced connection-table entry: a client -> VIP flow
// and the address of its backend (indexes differ between nodes).
type FlowEntry struct {
	Src, Dst netip.AddrPort
	Proto    uint8
	Backend  netip.Addr
}

// Flow batch encoding, per entry: flow family (4|6), backend family (4|6),
// protocol, source port, destination port (big endian), then source,
// destination and backend addresses of their families' lengths.
func addrLen(fam byte) (int, error) {
	switch fam {
	case 4:
		return 4, nil
	case 6:
		return 16, nil
	}
	return 0, fmt.Errorf("address family %d: %w", fam, peer.ErrMalformed)
}

func famOf(a netip.Addr) byte {
	if a.Is4() {
		return 4
	}
	return 6
}

// MaxFlowEntry is the most bytes one entry takes in MarshalFlows'
// encoding (an IPv6 flow to an IPv6 backend).
const MaxFlowEntry = 3 + 2 + 2 + 3*16

// MarshalFlows encodes a batch of entries.
func MarshalFlows(fs []FlowEntry) []byte {
	out := make([]byte, 0, len(fs)*54)
	for _, f := range fs {
		src, dst, be := f.Src.Addr().Unmap(), f.Dst.Addr().Unmap(), f.Backend.Unmap()
		out = append(out, famOf(dst), famOf(be), f.Proto)
		out = binary.BigEndian.AppendUint16(out, f.Src.Port())
		out = binary.BigEndian.AppendUint16(out, f.Dst.Port())
		out = append(out, src.AsSlice()...)
		out = append(out, dst.AsSlice()...)
		out = append(out, be.AsSlice()...)
	}
	return out
}

// UnmarshalFlows decodes a batch; any malformed byte refuses the batch.
func UnmarshalFlows(b []byte) ([]FlowEntry, error) {
	var out []FlowEntry
	for len(b) > 0 {
		if len(b) < 7 {
			return nil, fmt.Errorf("flow entry of %d bytes: %w", len(b), peer.ErrLength)
		}
		fl, err := addrLen(b[0])
		if err != nil {
			return nil, err
		}
		bl, err := addrLen(b[1])
		if err != nil {
			return nil, err
		}
		n := 7 + 2*fl + bl
		if len(b) < n {
			return nil, fmt.Errorf("flow entry of %d bytes, want %d: %w", len(b), n, peer.ErrLength)
		}
		src, _ := netip.AddrFromSlice(b[7 : 7+fl])
		dst, _ := netip.AddrFromSlice(b[7+fl : 7+2*fl])
		be, _ := netip.AddrFromSlice(b[7+2*fl : n])
		f := FlowEntry{Proto: b[2], Backend: be,
			Src: netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[3:])),
			Dst: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[5:]))}
		if src.Is4In6() || dst.Is4In6() || be.Is4In6() {
			return nil, fmt.Errorf("flow entry with a v4-mapped address: %w", peer.ErrMalformed)
		}
		if f.Proto != 6 && f.Proto != 17 {
			return nil, fmt.Errorf("flow protocol %d: %w", f.Proto, peer.ErrMalformed)
		}
		out = append(out, f)
		b = b[n:]
	}
	return out, nil
}
