package peer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
)

// Listener closes at once, before anything is read, every connection
// that does not come from an allowed peer, and every one past that
// peer's slots: nothing waits in a queue. Sync servers (the pair's, the
// cluster's flow sync) serve on it.
type Listener struct {
	net.Listener
	Allowed func(netip.Addr) bool
	Refused func(reason string) // "unknown-peer" or "busy"
	Slots   *Slots
}

// Slots bound the connections each peer may hold open at once. The limit
// is per peer, so that every peer keeping its push connection open never
// crowds out another (with one limit for all, the ninth of nine peers
// was refused as busy); the total stays bounded by the allowed peers.
type Slots struct {
	mu   sync.Mutex
	per  int
	used map[netip.Addr]int
}

// NewSlots gives each peer per connections.
func NewSlots(per int) *Slots { return &Slots{per: per, used: map[netip.Addr]int{}} }

func (s *Slots) take(a netip.Addr) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used[a] >= s.per {
		return false
	}
	s.used[a]++
	return true
}

func (s *Slots) give(a netip.Addr) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used[a]--; s.used[a] <= 0 {
		delete(s.used, a)
	}
}

// Accept returns the next connection from an allowed peer with a free slot.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ta, ok := c.RemoteAddr().(*net.TCPAddr)
		if !ok || !l.Allowed(ta.AddrPort().Addr().Unmap()) {
			c.Close()
			l.Refused("unknown-peer")
			continue
		}
		a := ta.AddrPort().Addr().Unmap()
		if !l.Slots.take(a) {
			c.Close()
			l.Refused("busy")
			continue
		}
		return &slotConn{Conn: c, slots: l.Slots, peer: a}, nil
	}
}

// slotConn gives its slot back when closed.
type slotConn struct {
	net.Conn
	slots *Slots
	peer  netip.Addr
	once  sync.Once
}

func (c *slotConn) Close() error {
	c.once.Do(func() { c.slots.give(c.peer) })
	return c.Conn.Close()
}

// URL is the base URL of a peer's endpoint.
func URL(p netip.AddrPort) string {
	return "http://" + net.JoinHostPort(p.Addr().String(), strconv.Itoa(int(p.Port())))
}

// SourceFor is the local address the kernel uses to reach peer: the one
// a sync server listens on, so that clients of the VIPs cannot reach it.
func SourceFor(peer netip.Addr) (netip.Addr, error) {
	c, err := net.Dial("udp", netip.AddrPortFrom(peer, 9).String()) // connects a socket; sends nothing
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no route to peer %s: %w", peer, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), nil
}

// ReadBody reads a request body of at most limit bytes, before its MAC
// can be checked; what is larger is refused unread. On error it returns
// the HTTP status to answer and the refusal's reason ("too-large" or
// "read").
func ReadBody(r *http.Request, limit int64) (body []byte, code int, reason string, err error) {
	if r.ContentLength > limit {
		return nil, http.StatusRequestEntityTooLarge, "too-large", fmt.Errorf("%d bytes, at most %d", r.ContentLength, limit)
	}
	body, err = io.ReadAll(io.LimitReader(r.Body, limit+1))
	if int64(len(body)) > limit {
		return nil, http.StatusRequestEntityTooLarge, "too-large", fmt.Errorf("over %d bytes", limit)
	}
	if err != nil {
		return nil, http.StatusBadRequest, "read", err
	}
	return body, 0, "", nil
}

// ReadAnswer reads a response body of at most limit bytes.
func ReadAnswer(r io.Reader, limit int64) ([]byte, error) {
	out, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(out)) > limit {
		return nil, fmt.Errorf("answer over %d bytes, refused at the bound", limit)
	}
	return out, nil
}

// Call sends a request of kind to url through c, signed by s, and
// returns the answer: read within limit, refused unless 200 OK, and
// verified with key as the answer to this request.
func Call(ctx context.Context, c *http.Client, s *Signer, key []byte, method, url, kind string, body []byte, limit int64) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	s.Sign(req.Header, kind, body)
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out, err := ReadAnswer(resp.Body, limit)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, kind, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s %s: %s: %s", method, kind, resp.Status, bytes.TrimSpace(out))
	}
	if err := VerifyResponse(key, req.Header, resp.Header, kind, out); err != nil {
		return nil, err
	}
	return out, nil
}
