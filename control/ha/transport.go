package ha

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"time"
)

// DefaultPort carries adverts (UDP) and state and flow sync (TCP).
const DefaultPort = 9643

// ParsePeer parses ADDR or ADDR:PORT (IPv6 in brackets with a port).
func ParsePeer(s string) (netip.AddrPort, error) {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("--ha-peer %q: want ADDR or ADDR:PORT", s)
	}
	return netip.AddrPortFrom(a.Unmap(), DefaultPort), nil
}

// UDP sends adverts to every peer from one socket and receives theirs;
// datagrams from any other address are refused and counted.
type UDP struct {
	conn  *net.UDPConn
	peers []netip.AddrPort
}

// ListenUDP binds the advert socket on port (all addresses).
func ListenUDP(port uint16, peers []netip.AddrPort) (*UDP, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(port)})
	if err != nil {
		return nil, fmt.Errorf("ha advert socket on port %d: %w", port, err)
	}
	return &UDP{conn: c, peers: peers}, nil
}

// Send implements Transport.
func (u *UDP) Send(b []byte) error {
	var errs []error
	for _, p := range u.peers {
		if _, err := u.conn.WriteToUDPAddrPort(b, p); err != nil {
			errs = append(errs, fmt.Errorf("advert to %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// Close closes the socket; Serve returns.
func (u *UDP) Close() error { return u.conn.Close() }

// PeerKey names a peer by address in status and metrics.
func PeerKey(a netip.Addr) string { return a.Unmap().String() }

// Serve passes every datagram from a peer to n until the socket is
// closed (the owner closes it after its last advert, on shutdown).
func (u *UDP) Serve(n *Node) error {
	known := map[netip.Addr]bool{}
	for _, p := range u.peers {
		known[p.Addr().Unmap()] = true
		n.AddPeer(PeerKey(p.Addr()))
	}
	buf := make([]byte, 2048)
	for {
		m, from, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read adverts: %w", err)
		}
		if !known[from.Addr().Unmap()] {
			n.Refuse(ErrUnknownPeer)
			continue
		}
		n.Receive(buf[:m], PeerKey(from.Addr()), time.Now())
	}
}

// PeerURL is the base URL of a peer's sync endpoint.
func PeerURL(p netip.AddrPort) string {
	return "http://" + net.JoinHostPort(p.Addr().String(), strconv.Itoa(int(p.Port())))
}
