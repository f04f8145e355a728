// Package hook runs the promotion and demotion hooks of failover VIPs: a
// command through /bin/sh in a process group of its own, or an HTTP POST,
// each bounded in time and in the output it keeps.
package hook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
	"time"
)

// Action says why a hook runs.
type Action string

// Actions of a hook.
const (
	Promote Action = "promote" // a replica becomes the primary
	Demote  Action = "demote"  // a recovered old primary rejoins as a replica
)

// Event is what a hook is told: as SLUICE_* environment variables for a
// command, as a JSON body for a URL.
type Event struct {
	Action     Action `json:"action"`
	VIP        string `json:"vip"`
	OldPrimary string `json:"old_primary"`
	NewPrimary string `json:"new_primary"`
	Epoch      uint64 `json:"epoch"`
	Node       string `json:"node"`
}

// Hook is one hook: Cmd if set, else URL; neither set does nothing.
// A command runs as User when set (see LookupUser), else as the daemon.
type Hook struct {
	Cmd     string
	URL     string
	Timeout time.Duration
	User    *syscall.Credential
}

// LookupUser is the credential of a user name or uid, with its groups.
func LookupUser(name string) (*syscall.Credential, error) {
	u, err := user.Lookup(name)
	if err != nil {
		if u, err = user.LookupId(name); err != nil {
			return nil, fmt.Errorf("hook user %q: %w", name, err)
		}
	}
	uid, _ := strconv.ParseUint(u.Uid, 10, 32)
	gid, _ := strconv.ParseUint(u.Gid, 10, 32)
	c := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	gids, _ := u.GroupIds()
	for _, g := range gids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			c.Groups = append(c.Groups, uint32(n))
		}
	}
	return c, nil
}

// MaxOutput bounds what a hook's output (or a URL's answer) is kept of.
const MaxOutput = 64 << 10

// waitDelay is how long a command's output is awaited after it exited:
// a child it left in the background may hold the output open for ever.
const waitDelay = 200 * time.Millisecond

// Run runs the hook for e within its timeout. Exit 0, or an HTTP 2xx
// answer (redirects are not followed), is success; the output comes back
// either way, cut at MaxOutput.
func (h Hook) Run(ctx context.Context, e Event) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, h.Timeout)
	defer cancel()
	switch {
	case h.Cmd != "":
		return h.runCmd(ctx, e)
	case h.URL != "":
		return h.post(ctx, e)
	}
	return "", nil
}

func (h Hook) runCmd(ctx context.Context, e Event) (string, error) {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", h.Cmd)
	cmd.Env = append(os.Environ(), "SLUICE_ACTION="+string(e.Action), "SLUICE_VIP="+e.VIP, "SLUICE_OLD_PRIMARY="+e.OldPrimary,
		"SLUICE_NEW_PRIMARY="+e.NewPrimary, fmt.Sprintf("SLUICE_EPOCH=%d", e.Epoch), "SLUICE_NODE="+e.Node)
	var out capped
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group, so that a timeout kills every process the
	// hook started, not only the shell.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: h.User}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	err := cmd.Run()
	switch {
	case ctx.Err() != nil:
		return out.String(), fmt.Errorf("hook timed out after %v", h.Timeout)
	case errors.Is(err, exec.ErrWaitDelay):
		return out.String(), nil // exited 0; a child it left holds the output
	case err != nil:
		return out.String(), fmt.Errorf("hook %q: %v", h.Cmd, err)
	}
	return out.String(), nil
}

// client posts URL hooks: redirects are answers, not followed.
var client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func (h Hook) post(ctx context.Context, e Event) (string, error) {
	body, err := json.Marshal(e)
	if err != nil {
		return "", fmt.Errorf("hook %s: %w", h.URL, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("hook %s: %w", h.URL, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return "", fmt.Errorf("hook %s: %v", h.URL, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, MaxOutput))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return "", fmt.Errorf("hook %s: %s", h.URL, resp.Status)
	}
	return resp.Status, nil
}

// capped keeps the first MaxOutput bytes written to it.
type capped struct {
	buf bytes.Buffer
	cut bool
}

func (c *capped) Write(p []byte) (int, error) {
	if room := MaxOutput - c.buf.Len(); room < len(p) {
		c.cut = true
		c.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return c.buf.Write(p)
}

func (c *capped) String() string {
	if c.cut {
		return c.buf.String() + fmt.Sprintf("\n[output cut at %d bytes]", MaxOutput)
	}
	return c.buf.String()
}
