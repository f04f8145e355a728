package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
)

// Every command that prints an answer of the daemon goes through output:
// -o json prints it as indented JSON, -o table (the default) through the
// command's own printer, which lives next to the command.

func outputFlag() cli.Flag {
	return &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}
}

func wantJSON(c *cli.Context) (bool, error) {
	switch c.String("output") {
	case "table", "":
		return false, nil
	case "json":
		return true, nil
	}
	return false, fmt.Errorf("-o %q: want table or json", c.String("output"))
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// output prints v as JSON when asJSON, else through table.
func output[T any](c *cli.Context, asJSON bool, v T, table func(T) error) error {
	if asJSON {
		return printJSON(c.App.Writer, v)
	}
	return table(v)
}

// call checks -o first (so that a bad one changes nothing), asks the
// daemon through ask, and prints its answer with output.
func call[T any](c *cli.Context, ask func(*client) (T, error), table func(T) error) error {
	asJSON, err := wantJSON(c)
	if err != nil {
		return err
	}
	v, err := ask(newClient(c))
	if err != nil {
		return err
	}
	return output(c, asJSON, v, table)
}

// show is call for a GET of path.
func show[T any](c *cli.Context, path string, table func(T) error) error {
	return call(c, func(cl *client) (T, error) {
		var v T
		err := cl.do(c.Context, "GET", path, nil, nil, &v)
		return v, err
	}, table)
}

// newTable is a writer of aligned columns, as every table printer uses.
func newTable(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }
