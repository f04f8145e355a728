package ha

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
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
// datagrams from any other address are refused and counted. Adverts are
// sent with TTL (hop limit) 255, and one that arrives with less crossed a
// router: it is refused before its MAC is computed (GTSM, RFC 5082), so a
// flood from off-link costs almost nothing.
type UDP struct {
	conn  *net.UDPConn
	peers []netip.AddrPort
}

// advertTTL is the TTL adverts are sent and must arrive with.
const advertTTL = 255

// recvBuffer is the advert socket's receive buffer: room for a burst.
const recvBuffer = 4 << 20

// ListenUDP binds the advert socket on port (all addresses).
func ListenUDP(port uint16, peers []netip.AddrPort) (*UDP, error) {
	c, err := net.ListenUDP("udp", &net.UDPAddr{Port: int(port)})
	if err != nil {
		return nil, fmt.Errorf("ha advert socket on port %d: %w", port, err)
	}
	if err := setAdvertOpts(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("ha advert socket on port %d: %w", port, err)
	}
	return &UDP{conn: c, peers: peers}, nil
}

// setAdvertOpts sets the TTL and hop limit sent, asks for those received
// (for IPv4 on this dual-stack socket too), and enlarges the receive
// buffer past rmem_max (the daemon runs as root).
func setAdvertOpts(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, o := range []struct{ level, opt, v int }{
			{unix.IPPROTO_IP, unix.IP_TTL, advertTTL},
			{unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, advertTTL},
			{unix.IPPROTO_IP, unix.IP_RECVTTL, 1},
			{unix.IPPROTO_IPV6, unix.IPV6_RECVHOPLIMIT, 1},
		} {
			if serr = unix.SetsockoptInt(int(fd), o.level, o.opt, o.v); serr != nil {
				return
			}
		}
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, recvBuffer) != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, recvBuffer)
		}
	})
	return errors.Join(err, serr)
}

// arrivalTTL reads the TTL or hop limit a datagram arrived with from its
// control messages; ok is false when there was none.
func arrivalTTL(oob []byte) (ttl int, ok bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue // bounded: the value is a 32-bit int
		}
		if (m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_TTL) ||
			(m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_HOPLIMIT) {
			return int(int32(binary.NativeEndian.Uint32(m.Data[:4]))), true
		}
	}
	return 0, false
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
	oob := make([]byte, 128)
	for {
		m, oobn, _, from, err := u.conn.ReadMsgUDPAddrPort(buf, oob)
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
		if ttl, ok := arrivalTTL(oob[:oobn]); !ok || ttl != advertTTL {
			n.Refuse(ErrTTL)
			continue
		}
		n.Receive(buf[:m], PeerKey(from.Addr()), time.Now())
	}
}
