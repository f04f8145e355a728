// Package layout converts between Go values and the layouts of bpf/sluice.h:
// addresses as the words the programs compare, and ports in network byte
// order. Only the loader and its subpackages use it.
package layout

import (
	"encoding/binary"
	"net/netip"

	"github.com/sluicelb/sluice/bpf"
)

// Family is an address's family as sluice.h numbers it.
func Family(a netip.Addr) uint8 {
	if a.Is4() {
		return uint8(bpf.LbSluiceFamilySLUICE_FAMILY_V4)
	}
	return uint8(bpf.LbSluiceFamilySLUICE_FAMILY_V6)
}

// Words stores the address bytes in memory order, as sluice.h expects.
func Words(a netip.Addr) [4]uint32 {
	var w [4]uint32
	if a.Is4() {
		b := a.As4()
		w[0] = binary.NativeEndian.Uint32(b[:])
		return w
	}
	b := a.As16()
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[i*4:])
	}
	return w
}

// Addr is the address of words w of family fam.
func Addr(w [4]uint32, fam uint8) netip.Addr {
	var b [16]byte
	for i := range w {
		binary.NativeEndian.PutUint32(b[i*4:], w[i])
	}
	if fam == uint8(bpf.LbSluiceFamilySLUICE_FAMILY_V4) {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// Htons is v in network byte order.
func Htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

// Ntohs is v in host byte order.
func Ntohs(v uint16) uint16 { return Htons(v) }

// AddrKey is an address as the programs' address-keyed maps hold it.
func AddrKey(a netip.Addr) bpf.LbAddrKey {
	return bpf.LbAddrKey{Addr: Words(a), Family: Family(a)}
}

// Default outer source prefixes of encapsulated packets.
var (
	DefaultEncapSrc4 = netip.MustParseAddr("172.16.0.0")
	DefaultEncapSrc6 = netip.MustParseAddr("fd00:5:1ce::")
)

// Counter is a packet and byte count summed over CPUs.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// MaxBackends is the size of the backend table (sluice.h); index 0 is
// reserved.
const MaxBackends = 4096
