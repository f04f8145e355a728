package api

import "time"

// PromoteRequest is a planned switchover: `sluice promote VIP ADDR`.
type PromoteRequest struct {
	VIP  string `json:"vip"`
	Addr string `json:"addr"`
}

// PromoteResult reports a promotion.
type PromoteResult struct {
	VIP        string `json:"vip"`
	OldPrimary string `json:"old_primary"`
	NewPrimary string `json:"new_primary"`
	Epoch      uint64 `json:"epoch"`
	HookOutput string `json:"hook_output,omitempty"`
	HookTime   string `json:"hook_time,omitempty"`
}

// DrillRequest asks for a disaster drill.
type DrillRequest struct {
	VIP      string `json:"vip"`
	Action   string `json:"action"` // disable-backend, fail-primary, promote
	Addr     string `json:"addr,omitempty"`
	Hold     string `json:"hold,omitempty"`      // default 10s
	MaxApply string `json:"max_apply,omitempty"` // default 50ms
}

// DrillStep is one timestamped step of a drill.
type DrillStep struct {
	Time time.Time `json:"time"`
	What string    `json:"what"`
}

// DrillBackend is one backend's traffic before and during the drill.
type DrillBackend struct {
	Addr          string  `json:"addr"`
	BaselinePPS   float64 `json:"baseline_pps"`
	DuringPPS     float64 `json:"during_pps"`
	BaselineShare float64 `json:"baseline_share"`
	DuringShare   float64 `json:"during_share"`
	// Packets counted by the data plane during the hold.
	DuringPackets uint64 `json:"during_packets"`
	StateBefore   string `json:"state_before"`
	StateAfter    string `json:"state_after"`
}

// DrillReport is what a drill measured; reports are kept in the state dir.
type DrillReport struct {
	ID       string      `json:"id"`
	VIP      string      `json:"vip"`
	Action   string      `json:"action"`
	Target   string      `json:"target"`
	Started  time.Time   `json:"started"`
	Finished time.Time   `json:"finished"`
	Steps    []DrillStep `json:"steps"`
	// CommitSeconds: action started -> change committed durably (for a
	// promotion: epoch, hook, primary); ApplySeconds: committed -> maps
	// written, which --max-apply judges.
	CommitSeconds float64        `json:"commit_seconds"`
	ApplySeconds  float64        `json:"apply_seconds"`
	MaxApply      string         `json:"max_apply"`
	Backends      []DrillBackend `json:"backends"`
	OthersHealthy bool           `json:"others_healthy"`
	HookOutput    string         `json:"hook_output,omitempty"`
	HookTime      string         `json:"hook_time,omitempty"`
	NotRestored   []string       `json:"not_restored"`
	Pass          bool           `json:"pass"`
	Failures      []string       `json:"failures"`
}

// AvailabilityReport is what `sluice availability -o json` prints.
type AvailabilityReport struct {
	VIPs []VIPAvailability `json:"vips"`
}

// VIPAvailability holds one VIP's measured and modelled figures.
type VIPAvailability struct {
	VIP      string                `json:"vip"`
	Need     int                   `json:"need"` // k: usable backends the VIP needs
	Of       int                   `json:"of"`   // n
	Measured map[string]float64    `json:"measured"`
	Modelled map[string]float64    `json:"modelled"`
	Backends []BackendAvailability `json:"backends"`
}

// BackendAvailability is one backend's measured availability.
type BackendAvailability struct {
	Addr     string             `json:"addr"`
	Measured map[string]float64 `json:"measured"`
}
