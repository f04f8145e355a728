package api

import "time"

// BackendStates are the states status and metrics report.
var BackendStates = []string{"up", "down", "draining", "disabled"}

// Status is what `sluice status -o json` prints.
type Status struct {
	Revision uint64      `json:"revision"`
	Role     string      `json:"role"`
	Iface    string      `json:"iface"`
	Uptime   string      `json:"uptime"`
	VIPs     []VIPStatus `json:"vips"`
	// HA is this node's view of its LB pair, with each node's revision.
	HA *HAStatus `json:"ha,omitempty"`
}

// VIPStatus is one VIP in Status.
type VIPStatus struct {
	VIP        string `json:"vip"`
	Forward    string `json:"forward"`
	RingSize   uint32 `json:"ring_size"`
	RingSHA256 string `json:"ring_sha256"` // of the slots' backend addresses (16 bytes each): equal on every node with equal rings
	MinActive  int    `json:"min_active"`
	Policy     string `json:"policy"`
	Primary    string `json:"primary,omitempty"`
	Epoch      uint64 `json:"epoch,omitempty"`
	Packets    uint64 `json:"packets"`
	Bytes      uint64 `json:"bytes"`
	// RingRebuilds counts the ring's swaps since the daemon started.
	RingRebuilds uint64          `json:"ring_rebuilds"`
	Backends     []BackendStatus `json:"backends"`
}

// BackendStatus is one backend in Status.
type BackendStatus struct {
	Addr   string `json:"addr"`
	State  string `json:"state"`
	Usable bool   `json:"usable"`
	Weight uint32 `json:"weight"`
	// EffectiveWeight is the weight the ring gives it (Weight scaled by
	// its agent, load metric and slow start; 0 while it takes no new
	// flows), WeightReason why the two differ. Agent and Load are the
	// last agent answer and load value, or why there was none.
	EffectiveWeight float64   `json:"effective_weight"`
	WeightReason    string    `json:"weight_reason,omitempty"`
	Agent           string    `json:"agent,omitempty"`
	Load            string    `json:"load,omitempty"`
	Standby         bool      `json:"standby"`
	Priority        int       `json:"priority,omitempty"`
	RingSlots       int       `json:"ring_slots"`
	Packets         uint64    `json:"packets"`
	Bytes           uint64    `json:"bytes"`
	LastChange      time.Time `json:"last_change"`
	Reason          string    `json:"reason"`
}

// HAStatus is what `sluice ha status -o json` prints.
type HAStatus struct {
	Enabled     bool              `json:"enabled"`
	Node        string            `json:"node,omitempty"`
	Role        string            `json:"role"`
	Fault       bool              `json:"fault,omitempty"`
	Priority    uint8             `json:"priority,omitempty"`
	Preempt     bool              `json:"preempt,omitempty"`
	Advert      string            `json:"advert,omitempty"`
	MasterDown  string            `json:"master_down,omitempty"`
	Revision    uint64            `json:"revision"`
	DualMaster  bool              `json:"dual_master"`
	Synced      bool              `json:"synced"`
	SyncLag     string            `json:"flow_sync_lag,omitempty"`
	Peers       []HAPeer          `json:"peers,omitempty"`
	BadAdverts  map[string]uint64 `json:"bad_adverts,omitempty"`
	Transitions map[string]uint64 `json:"transitions,omitempty"`
}

// HAPeer is one peer in HAStatus.
type HAPeer struct {
	Addr       string `json:"addr"`
	Node       string `json:"node,omitempty"`
	Role       string `json:"role,omitempty"`
	Up         bool   `json:"up"`
	AdvertAge  string `json:"advert_age,omitempty"`
	Revision   uint64 `json:"revision"`
	RevisionOK bool   `json:"revision_match"`
}

// ClusterStatus is `sluice cluster status`: the store, the coordinator
// and every live node's report, as etcd holds them.
type ClusterStatus struct {
	Store       string `json:"store"` // "etcd" or "bolt"
	Cluster     string `json:"cluster,omitempty"`
	Revision    uint64 `json:"revision"`
	Coordinator string `json:"coordinator"`
	// StoreUp is false while etcd does not answer this node;
	// StoreDownSince says since when (RFC 3339).
	StoreUp        bool   `json:"store_up"`
	StoreDownSince string `json:"store_down_since,omitempty"`
	Quorum         string `json:"quorum,omitempty"`
	// StateRefused is why the newest state in etcd is refused, while it
	// is (the node forwards the last good one).
	StateRefused string        `json:"state_refused,omitempty"`
	Nodes        []ClusterNode `json:"nodes"`
}

// ClusterNode is one node's published report.
type ClusterNode struct {
	Name            string                       `json:"name"`
	Addr            string                       `json:"addr"`
	AppliedRevision uint64                       `json:"applied_revision"`
	RingSHA256      map[string]string            `json:"ring_sha256"`
	Health          map[string]map[string]string `json:"health"`
	LastSeen        string                       `json:"last_seen"`
}

// BGPStatus is `sluice bgp status -o json`.
type BGPStatus struct {
	Enabled   bool              `json:"enabled"`
	ASN       uint32            `json:"asn,omitempty"`
	RouterID  string            `json:"router_id,omitempty"`
	Draining  bool              `json:"draining"`
	Peers     []BGPPeer         `json:"peers"`
	Announced []string          `json:"announced"`
	Withheld  map[string]string `json:"withheld"`
	// Services is each VIP's verdict: one dead service on a shared
	// address shows here while the address stays announced.
	Services []BGPService `json:"services"`
}

// BGPPeer is one router in BGPStatus.
type BGPPeer struct {
	Addr   string `json:"addr"`
	ASN    uint32 `json:"asn"`
	State  string `json:"state"`
	Uptime string `json:"uptime"`
	BFD    string `json:"bfd"`
}

// BGPService is one VIP's verdict in BGPStatus.
type BGPService struct {
	VIP         string `json:"vip"`
	Serviceable bool   `json:"serviceable"`
	Reason      string `json:"reason,omitempty"`
	Usable      int    `json:"usable"`
	MinActive   int    `json:"min_active"`
}
