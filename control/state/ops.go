package state

import "net/netip"

// The changes an operator makes, as functions a commit runs on the
// state it read (Commit validates the result).

// AddVIP adds v; a VIP with its key is refused as a conflict.
func AddVIP(v VIP) func(*State) error {
	return func(s *State) error {
		k, err := ParseVIPKey(v.VIP)
		if err != nil {
			return err
		}
		if s.FindVIP(k) >= 0 {
			return Conflict("vip %s: already exists", FormatVIPKey(k))
		}
		v.VIP = FormatVIPKey(k)
		s.VIPs = append(s.VIPs, v)
		return nil
	}
}

// DeleteVIP removes VIP k.
func DeleteVIP(k VIPKey) func(*State) error {
	return func(s *State) error {
		i, err := s.LookupVIP(k)
		if err != nil {
			return err
		}
		s.VIPs = append(s.VIPs[:i], s.VIPs[i+1:]...)
		return nil
	}
}

// AddBackend adds b to VIP k; a backend with its address is refused as a
// conflict.
func AddBackend(k VIPKey, b Backend) func(*State) error {
	return func(s *State) error {
		i, err := s.LookupVIP(k)
		if err != nil {
			return err
		}
		if a, err := netip.ParseAddr(b.Addr); err == nil && s.VIPs[i].FindBackend(a) >= 0 {
			return Conflict("backend %s of %s: already exists", a, FormatVIPKey(k))
		}
		s.VIPs[i].Backends = append(s.VIPs[i].Backends, b)
		return nil
	}
}

// Backend actions (ChangeBackend).
const (
	BackendDel     = "del"
	BackendDrain   = "drain"
	BackendUndrain = "undrain"
	BackendDisable = "disable"
	BackendEnable  = "enable"
)

// ValidBackendAction checks a backend action's name.
func ValidBackendAction(action string) error {
	switch action {
	case BackendDel, BackendDrain, BackendUndrain, BackendDisable, BackendEnable:
		return nil
	}
	return refuse("action", `"`+action+`"`, "want del, drain, undrain, disable or enable")
}

// ChangeBackend applies action to backend addr of VIP k.
func ChangeBackend(k VIPKey, addr netip.Addr, action string) func(*State) error {
	return func(s *State) error {
		if err := ValidBackendAction(action); err != nil {
			return err
		}
		i, err := s.LookupVIP(k)
		if err != nil {
			return err
		}
		v := &s.VIPs[i]
		j := v.FindBackend(addr)
		if j < 0 {
			return NotFound("backend %s of %s: no such backend", addr, FormatVIPKey(k))
		}
		switch action {
		case BackendDel:
			v.Backends = append(v.Backends[:j], v.Backends[j+1:]...)
		case BackendDrain, BackendUndrain:
			v.Backends[j].Drain = action == BackendDrain
		case BackendDisable, BackendEnable:
			v.Backends[j].Disabled = action == BackendDisable
		}
		return nil
	}
}

// SetDisabled sets the disabled flag of backend addr of VIP k (a drill's
// action and its restore).
func SetDisabled(k VIPKey, addr netip.Addr, disabled bool) func(*State) error {
	action := BackendEnable
	if disabled {
		action = BackendDisable
	}
	return ChangeBackend(k, addr, action)
}

// ReplaceVIPs makes the state's VIPs next's, keeping the coordinator's
// decisions (primaries, epochs) where next carries none.
func ReplaceVIPs(next []VIP) func(*State) error {
	return func(s *State) error {
		s.VIPs = KeepFailover(s.VIPs, next)
		return nil
	}
}
