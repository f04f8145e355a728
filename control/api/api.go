// Package api is the daemon's wire contract: the JSON bodies of its HTTP
// API on the unix socket (requests, responses, status, events, reports)
// and the client that speaks it. It holds no behaviour of the daemon.
package api

import "github.com/sluicelb/sluice/control/state"

// API request and response bodies, shared with the CLI.

// VIPAddRequest adds a VIP: the fields of a state.VIP an operator sets
// (backends are added one by one; primary and epoch are the
// coordinator's).
type VIPAddRequest struct {
	VIP         string         `json:"vip"`
	Forward     string         `json:"forward"`
	GUEPort     uint16         `json:"gue_port,omitempty"`
	RingSize    uint32         `json:"ring_size"`
	MinActive   int            `json:"min_active"`
	UDPTimeout  state.Duration `json:"udp_timeout"`
	Policy      string         `json:"policy,omitempty"`
	PromoteCmd  string         `json:"promote_cmd,omitempty"`
	PromoteURL  string         `json:"promote_url,omitempty"`
	DemoteCmd   string         `json:"demote_cmd,omitempty"`
	HookTimeout state.Duration `json:"hook_timeout,omitempty"`
	Failback    bool           `json:"failback,omitempty"`
	CheckVia    string         `json:"check_via,omitempty"`
}

// Model is the VIP the request adds, as the model has it.
func (r VIPAddRequest) Model() state.VIP {
	return state.VIP{VIP: r.VIP, Forward: r.Forward, GUEPort: r.GUEPort, RingSize: r.RingSize, MinActive: r.MinActive,
		UDPTimeout: r.UDPTimeout, Policy: r.Policy, PromoteCmd: r.PromoteCmd, PromoteURL: r.PromoteURL, DemoteCmd: r.DemoteCmd,
		HookTimeout: r.HookTimeout, Failback: r.Failback, CheckVia: r.CheckVia}
}

// BackendAddRequest adds a backend to a VIP.
type BackendAddRequest struct {
	VIP     string        `json:"vip"`
	Backend state.Backend `json:"backend"`
}

// BackendActionRequest changes one backend: del, drain, undrain, disable, enable.
type BackendActionRequest struct {
	VIP    string `json:"vip"`
	Addr   string `json:"addr"`
	Action string `json:"action"`
}

// ApplyRequest replaces the desired state.
type ApplyRequest struct {
	State  state.State `json:"state"`
	DryRun bool        `json:"dry_run"`
}

// ApplyResponse reports an apply.
type ApplyResponse struct {
	Diff     []string `json:"diff"`
	Revision uint64   `json:"revision"`
	Changed  bool     `json:"changed"`
}

// RingResponse is a VIP's ring read back from the kernel.
type RingResponse struct {
	VIP      string   `json:"vip"`
	RingSize int      `json:"ring_size"`
	Slots    []string `json:"slots"`
}

// ErrorResponse carries an error message.
type ErrorResponse struct {
	Error string `json:"error"`
}
