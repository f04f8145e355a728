package state

import "time"

// TimelineEvent records that a subject (a backend of a VIP, or a VIP as a
// whole when Backend is empty) became available or unavailable.
type TimelineEvent struct {
	Time      time.Time `json:"time"`
	VIP       string    `json:"vip"`
	Backend   string    `json:"backend,omitempty"`
	Available bool      `json:"available"`
}
