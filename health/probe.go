// Package health probes backends and runs the up/down state machine.
package health

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"syscall"
	"time"

	"github.com/sluicelb/sluice/control/state"
)

// Type is a probe type: the model's check types.
type Type = state.CheckType

// Probe types.
const (
	TCP   = state.CheckTCP
	HTTP  = state.CheckHTTP
	HTTPS = state.CheckHTTPS
	UDP   = state.CheckUDP
	GRPC  = state.CheckGRPC
	None  = state.CheckNone
)

// Probe describes one check of one target. Probes with equal fields are
// the same probe and run once, however many VIPs share them.
type Probe struct {
	Type Type
	Addr netip.AddrPort
	// Via, when valid, is the backend that a probe addressed to a VIP
	// (Addr) must reach through the data plane: Dial sends it there.
	Via netip.Addr
	// HTTP(S)
	Method      string // default GET
	Path        string // default /
	Host        string // Host header; default the address
	Codes       string // expected status codes, e.g. "200-399" (default) or "200,204"
	BodyContain string // optional substring of the body
	TLSVerify   bool   // https, grpc with TLS: verify the certificate
	// gRPC (grpc.health.v1): the service asked about ("" is the
	// server's overall health), and whether to speak TLS.
	Service string
	TLS     bool
	// UDP
	Payload string // sent; a reply (any) is expected
	// Dial optionally replaces the network dialer (tests, namespaces).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error) `json:"-"`
}

// Key identifies a probe for sharing (Dial is not part of the identity).
type Key struct {
	Type                                   Type
	Addr                                   netip.AddrPort
	Via                                    netip.Addr
	Method, Path, Host, Codes, BodyContain string
	TLSVerify                              bool
	Payload                                string
	Service                                string
	TLS                                    bool
}

// Key returns the probe's identity.
func (p Probe) Key() Key {
	return Key{p.Type, p.Addr, p.Via, p.Method, p.Path, p.Host, p.Codes, p.BodyContain, p.TLSVerify, p.Payload, p.Service, p.TLS}
}

func (p Probe) dial(ctx context.Context, network string) (net.Conn, error) {
	if p.Dial != nil {
		return p.Dial(ctx, network, p.Addr.String())
	}
	if p.Via.IsValid() {
		return nil, fmt.Errorf("no dialer through the data plane to backend %s", p.Via)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, p.Addr.String())
}

// Run performs the probe once within timeout. It returns nil when the
// target passes, or an error that says why it failed.
func (p Probe) Run(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	switch p.Type {
	case None:
		return nil
	case TCP:
		var c net.Conn
		if c, err = p.dial(ctx, "tcp"); err == nil {
			c.Close()
		}
	case UDP:
		err = p.runUDP(ctx)
	case HTTP, HTTPS:
		err = p.runHTTP(ctx)
	case GRPC:
		err = p.runGRPC(ctx)
	default:
		return fmt.Errorf("unknown check type %q", p.Type)
	}
	if err == nil {
		return nil
	}
	if p.Via.IsValid() {
		return fmt.Errorf("via vip %s: %w", p.Addr, probeError(ctx, err, timeout))
	}
	return probeError(ctx, err, timeout)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// simplify turns "dial tcp 10.0.0.1:80: connect: connection refused" into
// "connect: connection refused", keeping the errno for IsHard.
func simplify(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		if errors.Is(oe.Err, syscall.ECONNREFUSED) {
			return named{"connect: connection refused", syscall.ECONNREFUSED}
		}
		return fmt.Errorf("%s: %w", oe.Op, oe.Err)
	}
	return err
}

// named is an error with its own words that still unwraps to its cause.
type named struct {
	msg string
	err error
}

func (n named) Error() string { return n.msg }
func (n named) Unwrap() error { return n.err }

// IsHard reports a hard failure, one that needs no more probes to be
// sure of: the connection was refused (or, for UDP, the port was
// unreachable), reset before any answer, or an ICMP unreachable came
// back. A timeout is not hard: it may be a lost packet.
func IsHard(err error) bool {
	for _, e := range []error{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EHOSTUNREACH, syscall.ENETUNREACH} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (p Probe) runUDP(ctx context.Context) error {
	c, err := p.dial(ctx, "udp")
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	payload := p.Payload
	if payload == "" {
		payload = "sluice-health"
	}
	if _, err := c.Write([]byte(payload)); err != nil {
		return err
	}
	buf := make([]byte, 512)
	if _, err := c.Read(buf); err != nil {
		// An ICMP port unreachable surfaces as ECONNREFUSED on a
		// connected UDP socket.
		if errors.Is(err, syscall.ECONNREFUSED) {
			return named{"udp: port unreachable", syscall.ECONNREFUSED}
		}
		return err
	}
	return nil
}

func (p Probe) runHTTP(ctx context.Context) error {
	scheme := "http"
	if p.Type == HTTPS {
		scheme = "https"
	}
	method := p.Method
	if method == "" {
		method = http.MethodGet
	}
	path := p.Path
	if path == "" {
		path = "/"
	}
	req, err := http.NewRequestWithContext(ctx, method, scheme+"://"+p.Addr.String()+path, nil)
	if err != nil {
		return err
	}
	if p.Host != "" {
		req.Host = p.Host
	}
	tr := &http.Transport{
		DialContext:       func(ctx context.Context, network, _ string) (net.Conn, error) { return p.dial(ctx, network) },
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: !p.TLSVerify, ServerName: p.Host}, //nolint:gosec // operator's choice
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}).Do(req)
	if err != nil {
		var ue interface{ Unwrap() error }
		if errors.As(err, &ue) {
			return simplify(ue.Unwrap())
		}
		return err
	}
	defer resp.Body.Close()
	ok, err := state.CodesMatch(p.Codes, resp.StatusCode)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("http %d", resp.StatusCode)
	}
	if p.BodyContain != "" {
		body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if err != nil {
			return fmt.Errorf("read body: %w", err)
		}
		if !strings.Contains(string(body), p.BodyContain) {
			return fmt.Errorf("http %d: body lacks %q", resp.StatusCode, p.BodyContain)
		}
	}
	return nil
}
