package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Snapshot format written by `sluice backup save`.
const (
	SnapshotFormat  = "sluice-state-snapshot"
	SnapshotVersion = 1
)

// Snapshot is a versioned, checksummed copy of the desired state.
type Snapshot struct {
	Format   string          `json:"format"`
	Version  int             `json:"version"`
	Revision uint64          `json:"revision"`
	Time     time.Time       `json:"time"`
	SHA256   string          `json:"sha256"` // of the state's compact JSON
	State    json.RawMessage `json:"state"`
}

// NewSnapshot wraps a state.
func NewSnapshot(s State, now time.Time) (Snapshot, error) {
	raw, err := json.Marshal(s)
	if err != nil {
		return Snapshot{}, err
	}
	sum := sha256.Sum256(raw)
	return Snapshot{Format: SnapshotFormat, Version: SnapshotVersion, Revision: s.Revision,
		Time: now.UTC(), SHA256: hex.EncodeToString(sum[:]), State: raw}, nil
}

// Marshal renders the snapshot file.
func (s Snapshot) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// WriteFile writes the snapshot atomically: temp file, fsync, rename, fsync dir.
func (s Snapshot) WriteFile(path string) error {
	b, err := s.Marshal()
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, b, 0o600)
}

// WriteFileAtomic writes data to path so that path holds either its old
// content or all of data, whatever happens.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename into %s: %w", path, err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// ParseSnapshot checks a snapshot file completely (format, version,
// checksum, and every field of the state) and returns its state. Nothing is
// applied here: a refused file changes nothing.
func ParseSnapshot(data []byte) (State, error) {
	var s Snapshot
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return State{}, fmt.Errorf("snapshot: not a sluice snapshot (truncated or corrupt): %v", err)
	}
	if dec.More() {
		return State{}, fmt.Errorf("snapshot: trailing data after the snapshot")
	}
	if s.Format != SnapshotFormat {
		return State{}, fmt.Errorf("snapshot: format %q, want %q", s.Format, SnapshotFormat)
	}
	if s.Version != SnapshotVersion {
		return State{}, fmt.Errorf("snapshot: version %d, this sluice reads version %d", s.Version, SnapshotVersion)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, s.State); err != nil {
		return State{}, fmt.Errorf("snapshot: state: %v", err)
	}
	sum := sha256.Sum256(compact.Bytes())
	if hex.EncodeToString(sum[:]) != s.SHA256 {
		return State{}, fmt.Errorf("snapshot: checksum mismatch: the file is corrupt")
	}
	var st State
	sd := json.NewDecoder(bytes.NewReader(s.State))
	sd.DisallowUnknownFields()
	if err := sd.Decode(&st); err != nil {
		return State{}, fmt.Errorf("snapshot: state: %v", err)
	}
	if st.Revision != s.Revision {
		return State{}, fmt.Errorf("snapshot: revision %d does not match its state's %d", s.Revision, st.Revision)
	}
	check := st.Clone()
	check.Normalize()
	if err := check.Validate(); err != nil {
		return State{}, fmt.Errorf("snapshot: %w", err)
	}
	return st, nil
}

// Restore checks a snapshot completely and returns the change that
// restores it, with the snapshot's revision. Epochs and primaries carry
// over as KeepFailover says. Nothing is applied here: the server commits
// the change through the daemon, RestoreSnapshot through a store.
func Restore(data []byte) (change func(*State) error, revision uint64, err error) {
	snap, err := ParseSnapshot(data)
	if err != nil {
		return nil, 0, err
	}
	return restoring(snap), snap.Revision, nil
}

// restoring is the change that restores snap's VIPs.
func restoring(snap State) func(*State) error {
	return func(s *State) error {
		s.VIPs = KeepFailover(s.VIPs, snap.Clone().VIPs)
		return nil
	}
}

// RestoreSnapshot validates data completely and, only then, replaces the
// store's state with the snapshot's as one new revision.
func RestoreSnapshot(st Store, data []byte) (State, error) {
	change, _, err := Restore(data)
	if err != nil {
		return State{}, err
	}
	return st.Commit(change)
}
