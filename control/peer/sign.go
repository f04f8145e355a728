// Package peer is the signed calls between sluice nodes (an LB pair's
// state and flow sync, a cluster's flow sync): HMAC-SHA256 over each
// request and its answer with replay guards, the listener that admits
// only peers and only a few at a time, bounded reads, and the server and
// client that use them.
package peer

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
)

// Reasons a peer's message is refused, counted by name (Reason).
var (
	ErrLength    = errors.New("length")
	ErrMAC       = errors.New("mac")
	ErrReplay    = errors.New("replay")
	ErrMalformed = errors.New("malformed")
)

// Reason names a refusal for metrics: "mac", "replay", "malformed",
// "length", else "other".
func Reason(err error) string {
	for _, e := range []error{ErrLength, ErrMAC, ErrReplay, ErrMalformed} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return "other"
}

// Malformed marks err as a refusal of a malformed message.
func Malformed(err error) error { return fmt.Errorf("%w: %w", ErrMalformed, err) }

// Peer calls run over HTTP. Every request carries
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

// ReplayGuard refuses a message unless its (boot, sequence) is newer than
// the last accepted from the same node: a captured message cannot be
// played again, and a restarted node (later boot) starts afresh.
type ReplayGuard struct {
	last map[string][2]uint64
}

// AcceptSeq records (boot, seq) of node as seen, or says why it is refused.
func (g *ReplayGuard) AcceptSeq(node string, boot, seq uint64) error {
	if g.last == nil {
		g.last = map[string][2]uint64{}
	}
	l, ok := g.last[node]
	if ok && (boot < l[0] || (boot == l[0] && seq <= l[1])) {
		return fmt.Errorf("message from %s boot %d seq %d, already saw boot %d seq %d: %w", node, boot, seq, l[0], l[1], ErrReplay)
	}
	g.last[node] = [2]uint64{boot, seq}
	return nil
}
