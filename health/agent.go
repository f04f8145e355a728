package health

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// MaxAgentAnswer bounds an agent's answer: HAProxy's agents answer one
// short line, and anything longer is refused before it is parsed.
const MaxAgentAnswer = 512

// Agent states an answer may carry, as HAProxy's agent-check defines
// them. Operational: up, or down (also spelled fail and stopped).
// Administrative: ready, drain (no new flows, tracked flows kept) and
// maint.
const (
	AgentUp    = "up"
	AgentDown  = "down"
	AgentReady = "ready"
	AgentDrain = "drain"
	AgentMaint = "maint"
)

// AgentReport is a parsed agent answer. Fields left empty were not in
// the answer and keep their previous value.
type AgentReport struct {
	// Weight is the reported weight in percent of the configured one
	// (0–100), or -1 when the answer gave none.
	Weight int
	Op     string // "", AgentUp or AgentDown
	Admin  string // "", AgentReady, AgentDrain or AgentMaint
	// Desc is the text after '#', if any (printable ASCII).
	Desc string
}

// ErrAgentAnswer marks an answer that was refused: too long, not
// printable ASCII, an unknown word, a bad weight, or two words that
// contradict each other.
var ErrAgentAnswer = errors.New("malformed agent answer")

// ParseAgentAnswer parses one agent answer: words separated by spaces,
// tabs or commas, in any order, up to a newline; text after '#' is a
// description. Words: "N%" (0–100), up, down, fail, stopped, ready,
// drain, maint, and maxconn:N (accepted and ignored: sluice has no
// connection limit). Nothing is applied from an answer it refuses.
func ParseAgentAnswer(b []byte) (AgentReport, error) {
	r := AgentReport{Weight: -1}
	if len(b) > MaxAgentAnswer {
		return r, fmt.Errorf("%w: %d bytes, at most %d", ErrAgentAnswer, len(b), MaxAgentAnswer)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimSuffix(line, "\r")
	for i := 0; i < len(line); i++ {
		if c := line[i]; (c < 0x20 || c > 0x7e) && c != '\t' {
			return r, fmt.Errorf("%w: byte %#x at %d is not printable ASCII", ErrAgentAnswer, c, i)
		}
	}
	words, desc, _ := strings.Cut(line, "#")
	r.Desc = strings.TrimSpace(desc)
	fields := strings.FieldsFunc(words, func(c rune) bool { return c == ' ' || c == '\t' || c == ',' })
	if len(fields) == 0 {
		return AgentReport{Weight: -1}, fmt.Errorf("%w: no words", ErrAgentAnswer)
	}
	for _, w := range fields {
		if err := r.word(strings.ToLower(w)); err != nil {
			return AgentReport{Weight: -1}, err
		}
	}
	return r, nil
}

// word applies one word of an answer to r.
func (r *AgentReport) word(w string) error {
	set := func(dst *string, v string) error {
		if *dst != "" && *dst != v {
			return fmt.Errorf("%w: %q and %q contradict each other", ErrAgentAnswer, *dst, v)
		}
		*dst = v
		return nil
	}
	switch w {
	case AgentUp:
		return set(&r.Op, AgentUp)
	case AgentDown, "fail", "stopped":
		return set(&r.Op, AgentDown)
	case AgentReady, AgentDrain, AgentMaint:
		return set(&r.Admin, w)
	}
	if n, ok := strings.CutPrefix(w, "maxconn:"); ok {
		if _, err := strconv.ParseUint(n, 10, 32); err != nil {
			return fmt.Errorf("%w: %q: not a connection count", ErrAgentAnswer, w)
		}
		return nil
	}
	if p, ok := strings.CutSuffix(w, "%"); ok {
		v, err := strconv.Atoi(p)
		if err != nil || v < 0 || v > 100 || p != strconv.Itoa(v) {
			return fmt.Errorf("%w: weight %q: want 0%% to 100%%", ErrAgentAnswer, w)
		}
		if r.Weight >= 0 && r.Weight != v {
			return fmt.Errorf("%w: two weights, %d%% and %d%%", ErrAgentAnswer, r.Weight, v)
		}
		r.Weight = v
		return nil
	}
	return fmt.Errorf("%w: unknown word %q", ErrAgentAnswer, w)
}

// String is the answer an agent would send for r.
func (r AgentReport) String() string {
	var words []string
	if r.Weight >= 0 {
		words = append(words, strconv.Itoa(r.Weight)+"%")
	}
	for _, w := range []string{r.Op, r.Admin} {
		if w != "" {
			words = append(words, w)
		}
	}
	s := strings.Join(words, " ")
	if r.Desc != "" {
		s += " #" + r.Desc
	}
	return s
}

// Dialer opens a probe's connection; nil dials the network directly.
type Dialer func(ctx context.Context, network, addr string) (net.Conn, error)

// Agent is an agent check's target: HAProxy's agent-check, a TCP port on
// the backend that answers one line about its state.
type Agent struct {
	Addr netip.AddrPort
	Send string // sent first, as is (HAProxy's agent-send); "" sends nothing
	Dial Dialer
}

// Query asks the agent once within timeout and parses its answer: up to
// a newline, or until the agent closes. An answer longer than
// MaxAgentAnswer is refused (ErrAgentAnswer) without waiting for more.
func (a Agent) Query(ctx context.Context, timeout time.Duration) (AgentReport, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	dial := a.Dial
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	c, err := dial(ctx, "tcp", a.Addr.String())
	if err != nil {
		return AgentReport{Weight: -1}, fmt.Errorf("agent: %w", probeError(ctx, err, timeout))
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	if a.Send != "" {
		if _, err := io.WriteString(c, a.Send); err != nil {
			return AgentReport{Weight: -1}, fmt.Errorf("agent: send: %w", probeError(ctx, err, timeout))
		}
	}
	// One byte more than an answer may have: reading it proves the
	// answer too long, and nothing beyond it is ever read.
	buf := make([]byte, 0, MaxAgentAnswer+1)
	for len(buf) < cap(buf) && !bytes.ContainsRune(buf, '\n') {
		n, err := c.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return AgentReport{Weight: -1}, fmt.Errorf("agent: read: %w", probeError(ctx, err, timeout))
		}
	}
	return ParseAgentAnswer(buf)
}

// probeError names a failed probe step as the health checks do: a
// deadline is the probe's timeout, a connect error its errno.
func probeError(ctx context.Context, err error, timeout time.Duration) error {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) || isTimeout(err) {
		return fmt.Errorf("timeout after %v", timeout)
	}
	return simplify(err)
}
