package ha

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
)

// State and flow sync run over HTTP on the HA port. Every request carries
// the sender's node name, boot and sequence and an HMAC-SHA256 (shared
// key) over them, the message kind and the body's SHA-256; the receiver
// refuses a bad MAC or a replayed (boot, sequence) per kind. A response
// is signed the same way over the request's name, boot and sequence, so
// that it cannot be replayed to another request either.
const (
	hdrNode = "X-Sluice-Node"
	hdrBoot = "X-Sluice-Boot"
	hdrSeq  = "X-Sluice-Seq"
	hdrMAC  = "X-Sluice-Mac"
)

// Signer signs sync requests of one node.
type Signer struct {
	Key  []byte
	Node string
	Boot uint64
	seq  atomic.Uint64
}

func mac(key []byte, kind, node string, boot, seq uint64, body []byte) []byte {
	sum := sha256.Sum256(body)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(kind))
	m.Write([]byte{0})
	m.Write([]byte(node))
	m.Write([]byte{0})
	var b [16]byte
	binary.BigEndian.PutUint64(b[:], boot)
	binary.BigEndian.PutUint64(b[8:], seq)
	m.Write(b[:])
	m.Write(sum[:])
	return m.Sum(nil)
}

// Sign sets the authentication headers of a request of kind with body.
// Requests of one kind to one peer must be sent one after another, so
// that their sequence numbers arrive in order.
func (s *Signer) Sign(h http.Header, kind string, body []byte) {
	seq := s.seq.Add(1)
	h.Set(hdrNode, s.Node)
	h.Set(hdrBoot, strconv.FormatUint(s.Boot, 10))
	h.Set(hdrSeq, strconv.FormatUint(seq, 10))
	h.Set(hdrMAC, hex.EncodeToString(mac(s.Key, kind, s.Node, s.Boot, seq, body)))
}

// Verifier checks requests with replay guards per kind.
type Verifier struct {
	Key []byte

	mu     sync.Mutex
	guards map[string]*ReplayGuard
}

type ident struct {
	node      string
	boot, seq uint64
	mac       []byte
}

func readIdent(h http.Header) (ident, error) {
	var id ident
	var err error
	id.node = h.Get(hdrNode)
	if id.node == "" {
		return id, fmt.Errorf("no %s: %w", hdrNode, ErrMalformed)
	}
	if id.boot, err = strconv.ParseUint(h.Get(hdrBoot), 10, 64); err != nil {
		return id, fmt.Errorf("%s: %w", hdrBoot, ErrMalformed)
	}
	if id.seq, err = strconv.ParseUint(h.Get(hdrSeq), 10, 64); err != nil {
		return id, fmt.Errorf("%s: %w", hdrSeq, ErrMalformed)
	}
	if id.mac, err = hex.DecodeString(h.Get(hdrMAC)); err != nil {
		return id, fmt.Errorf("%s: %w", hdrMAC, ErrMalformed)
	}
	return id, nil
}

// Verify checks a request of kind and returns the sender's node name.
func (v *Verifier) Verify(h http.Header, kind string, body []byte) (string, error) {
	id, err := readIdent(h)
	if err != nil {
		return "", err
	}
	if !hmac.Equal(id.mac, mac(v.Key, kind, id.node, id.boot, id.seq, body)) {
		return "", ErrMAC
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.guards == nil {
		v.guards = map[string]*ReplayGuard{}
	}
	g := v.guards[kind]
	if g == nil {
		g = &ReplayGuard{}
		v.guards[kind] = g
	}
	if err := g.AcceptSeq(id.node, id.boot, id.seq); err != nil {
		return "", err
	}
	return id.node, nil
}

// SignResponse signs the response body to the request whose headers are req.
func SignResponse(key []byte, req, resp http.Header, kind string, body []byte) {
	id, _ := readIdent(req)
	resp.Set(hdrMAC, hex.EncodeToString(mac(key, "response "+kind, id.node, id.boot, id.seq, body)))
}

// VerifyResponse checks a response to the request whose headers are req.
func VerifyResponse(key []byte, req, resp http.Header, kind string, body []byte) error {
	id, err := readIdent(req)
	if err != nil {
		return err
	}
	got, err := hex.DecodeString(resp.Get(hdrMAC))
	if err != nil || !hmac.Equal(got, mac(key, "response "+kind, id.node, id.boot, id.seq, body)) {
		return fmt.Errorf("response to %s: %w", kind, ErrMAC)
	}
	return nil
}

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
	return 0, fmt.Errorf("address family %d: %w", fam, ErrMalformed)
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
			return nil, fmt.Errorf("flow entry of %d bytes: %w", len(b), ErrLength)
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
			return nil, fmt.Errorf("flow entry of %d bytes, want %d: %w", len(b), n, ErrLength)
		}
		src, _ := netip.AddrFromSlice(b[7 : 7+fl])
		dst, _ := netip.AddrFromSlice(b[7+fl : 7+2*fl])
		be, _ := netip.AddrFromSlice(b[7+2*fl : n])
		f := FlowEntry{Proto: b[2], Backend: be,
			Src: netip.AddrPortFrom(src, binary.BigEndian.Uint16(b[3:])),
			Dst: netip.AddrPortFrom(dst, binary.BigEndian.Uint16(b[5:]))}
		if src.Is4In6() || dst.Is4In6() || be.Is4In6() {
			return nil, fmt.Errorf("flow entry with a v4-mapped address: %w", ErrMalformed)
		}
		if f.Proto != 6 && f.Proto != 17 {
			return nil, fmt.Errorf("flow protocol %d: %w", f.Proto, ErrMalformed)
		}
		out = append(out, f)
		b = b[n:]
	}
	return out, nil
}
