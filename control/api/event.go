package api

import "time"

// Event is one state transition or change, as `sluice events` shows it.
type Event struct {
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"` // health, admin, config, failover
	VIP      string    `json:"vip,omitempty"`
	Backend  string    `json:"backend,omitempty"`
	From     string    `json:"from,omitempty"`
	To       string    `json:"to,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	Revision uint64    `json:"revision,omitempty"`
	// Marked is when the first map write for a health verdict completed
	// (the backend flag: the data plane stops or starts using it there);
	// Applied is when every write, rings included, had completed.
	Marked  *time.Time `json:"marked,omitempty"`
	Applied *time.Time `json:"applied,omitempty"`
}
