package main

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"gopkg.in/yaml.v3"

	"github.com/sluicelb/sluice/control"
	"github.com/sluicelb/sluice/control/api"
	"github.com/sluicelb/sluice/control/state"
)

func applyCommand() *cli.Command {
	return &cli.Command{
		Name: "apply", Usage: "apply a desired state file: idempotent, prints the diff, one revision",
		Flags: []cli.Flag{socketFlag(),
			&cli.StringFlag{Name: "file", Aliases: []string{"f"}, Required: true, Usage: "YAML or JSON state file"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the diff only"}},
		Action: func(c *cli.Context) error {
			raw, err := os.ReadFile(c.String("file"))
			if err != nil {
				return fmt.Errorf("-f: %w", err)
			}
			var st state.State
			dec := yaml.NewDecoder(strings.NewReader(string(raw)))
			dec.KnownFields(true)
			if err := dec.Decode(&st); err != nil {
				return fmt.Errorf("-f %s: %w", c.String("file"), err)
			}
			var resp api.ApplyResponse
			if err := newClient(c).do(c.Context, "POST", "/v1/apply", nil, api.ApplyRequest{State: st, DryRun: c.Bool("dry-run")}, &resp); err != nil {
				return err
			}
			for _, l := range resp.Diff {
				fmt.Fprintln(c.App.Writer, l)
			}
			switch {
			case len(resp.Diff) == 0:
				fmt.Fprintf(c.App.Writer, "no change (revision %d)\n", resp.Revision)
			case c.Bool("dry-run"):
				fmt.Fprintf(c.App.Writer, "dry run: nothing applied (revision %d)\n", resp.Revision)
			default:
				fmt.Fprintf(c.App.Writer, "applied as revision %d\n", resp.Revision)
			}
			return nil
		},
	}
}

func exportCommand() *cli.Command {
	return &cli.Command{
		Name: "export", Usage: "print the desired state in the format apply accepts",
		Flags: []cli.Flag{socketFlag(), &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "yaml", Usage: "yaml or json"}},
		Action: func(c *cli.Context) error {
			var st state.State
			if err := newClient(c).do(c.Context, "GET", "/v1/state", nil, nil, &st); err != nil {
				return err
			}
			switch c.String("output") {
			case "yaml":
				enc := yaml.NewEncoder(c.App.Writer)
				enc.SetIndent(2)
				return enc.Encode(st)
			case "json":
				return printJSON(c.App.Writer, st)
			}
			return fmt.Errorf("-o %q: want yaml or json", c.String("output"))
		},
	}
}

func backupCommand() *cli.Command {
	return &cli.Command{
		Name:  "backup",
		Usage: "save, restore and list state snapshots",
		Subcommands: []*cli.Command{
			{
				Name: "save", Usage: "write a checksummed snapshot atomically", ArgsUsage: "FILE", Flags: []cli.Flag{socketFlag()},
				Action: func(c *cli.Context) error {
					file, err := oneArg(c, "FILE")
					if err != nil {
						return err
					}
					var snap state.Snapshot
					if err := newClient(c).do(c.Context, "GET", "/v1/backup", nil, nil, &snap); err != nil {
						return err
					}
					if err := snap.WriteFile(file); err != nil {
						return err
					}
					fmt.Fprintf(c.App.Writer, "saved revision %d to %s (sha256 %s)\n", snap.Revision, file, snap.SHA256)
					return nil
				},
			},
			{
				Name: "restore", Usage: "validate a snapshot completely, then apply it as one change; with --state-dir, offline, into a stopped daemon's state",
				ArgsUsage: "FILE",
				Flags: []cli.Flag{socketFlag(),
					&cli.StringFlag{Name: "state-dir", Usage: "restore offline into this state directory (the daemon must be stopped); a corrupt state.db is moved aside"},
					&cli.BoolFlag{Name: "latest", Usage: "with --state-dir: restore the newest archived state (the one before the last change) instead of FILE"},
					&cli.IntFlag{Name: "archive-keep", Value: control.DefaultArchiveKeep, Usage: "with --state-dir: previous states kept in the archive"}},
				Action: backupRestore,
			},
			{
				Name: "list", Usage: "list archived previous states", Flags: []cli.Flag{socketFlag(), outputFlag()},
				Action: func(c *cli.Context) error {
					return show(c, "/v1/backups", func(entries []state.ArchiveEntry) error {
						tw := newTable(c.App.Writer)
						fmt.Fprintln(tw, "REVISION\tTIME\tSIZE\tPATH")
						for _, e := range entries {
							fmt.Fprintf(tw, "%d\t%s\t%d\t%s\n", e.Revision, e.Time.Format(time.RFC3339), e.Size, e.Path)
						}
						return tw.Flush()
					})
				},
			},
		},
	}
}

// backupRestore restores a snapshot through the daemon, or offline into a
// state directory.
func backupRestore(c *cli.Context) error {
	var data []byte
	var what string
	if c.Bool("latest") {
		if c.String("state-dir") == "" || c.NArg() != 0 {
			return errors.New("--latest: needs --state-dir and no FILE")
		}
		raw, e, err := state.LatestArchived(c.String("state-dir"))
		if err != nil {
			return fmt.Errorf("--latest: %w", err)
		}
		data, what = raw, e.Path
	} else {
		file, err := oneArg(c, "FILE")
		if err != nil {
			return err
		}
		if data, err = os.ReadFile(file); err != nil {
			return err
		}
		what = file
	}
	snap, err := state.ParseSnapshot(data)
	if err != nil {
		return fmt.Errorf("%s refused, nothing changed: %w", what, err)
	}
	if dir := c.String("state-dir"); dir != "" {
		st, aside, err := state.RestoreOffline(dir, data, c.Int("archive-keep"))
		if errors.Is(err, state.ErrLocked) {
			return fmt.Errorf("--state-dir %s: %w; restore through it instead: sluice backup restore %s", dir, err, what)
		}
		if err != nil {
			return fmt.Errorf("--state-dir %s: %w", dir, err)
		}
		if aside != "" {
			fmt.Fprintf(c.App.Writer, "the corrupt state file was moved to %s\n", aside)
		}
		fmt.Fprintf(c.App.Writer, "restored %s (revision %d) into %s as revision %d; start the daemon\n", what, snap.Revision, dir, st.Revision)
		return nil
	}
	var st state.State
	if err := newClient(c).do(c.Context, "POST", "/v1/restore", nil, data, &st); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "restored snapshot of revision %d as revision %d\n", snap.Revision, st.Revision)
	return nil
}
