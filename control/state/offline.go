package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// RestoreOffline restores a snapshot into the state directory of a
// daemon that is not running. The snapshot is checked completely first;
// a refused one changes nothing. A readable store gets it as one new
// revision, as an online restore would; a corrupt one is moved aside (to
// state.db.corrupt-<unix>) and a new store gets the snapshot's state with
// its own revision. It returns the stored state and where the corrupt
// file went ("" when there was none).
func RestoreOffline(dir string, data []byte, archiveKeep int) (State, string, error) {
	snap, err := ParseSnapshot(data)
	if err != nil {
		return State{}, "", err
	}
	st, err := OpenBoltStore(dir, archiveKeep)
	if err == nil {
		defer st.Close()
		out, err := st.Commit(restoring(snap))
		return out, "", err
	}
	if !errors.Is(err, ErrCorrupt) {
		return State{}, "", err
	}
	path := filepath.Join(dir, StateFile)
	aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().Unix())
	if err := os.Rename(path, aside); err != nil {
		return State{}, "", fmt.Errorf("move the corrupt %s aside: %w", path, err)
	}
	if st, err = OpenBoltStore(dir, archiveKeep); err != nil {
		return State{}, aside, err
	}
	defer st.Close()
	out, err := st.Replace(snap)
	return out, aside, err
}

// LatestArchived reads the newest archived state of a state directory: the
// state before its last committed change.
func LatestArchived(dir string) ([]byte, ArchiveEntry, error) {
	entries, err := ListArchive(dir)
	if err != nil {
		return nil, ArchiveEntry{}, err
	}
	if len(entries) == 0 {
		return nil, ArchiveEntry{}, fmt.Errorf("%s: no archived state", archiveDir(dir))
	}
	e := entries[len(entries)-1]
	data, err := os.ReadFile(e.Path)
	if err != nil {
		return nil, e, err
	}
	return data, e, nil
}
