// Command kstatus computes the kstatus of Kubernetes objects with
// sigs.k8s.io/cli-utils/pkg/kstatus/status.Compute, the status that kpt, Flux, cli-utils'
// apply --wait and other kstatus readers derive from an object (for a custom resource: its
// deletionTimestamp, observedGeneration and Reconciling/Stalled/Ready conditions).
//
// Input (stdin): a JSON array of objects. Output (stdout): a JSON array with one
// {"status": "Current"|"InProgress"|"Failed"|"Terminating"|..., "message": ...} per object,
// in order, or {"error": ...} for an object kstatus cannot read.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: kstatus < objects.json (a JSON array of objects)")
		os.Exit(2)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var objects []json.RawMessage
	if err := json.Unmarshal(input, &objects); err != nil {
		fail(fmt.Errorf("stdin is not a JSON array of objects: %w", err))
	}
	results := make([]result, 0, len(objects))
	for i, raw := range objects {
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(raw); err != nil {
			fail(fmt.Errorf("object %d: %w", i, err))
		}
		res, err := status.Compute(obj)
		if err != nil {
			results = append(results, result{Error: err.Error()})
			continue
		}
		results = append(results, result{Status: res.Status.String(), Message: res.Message})
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kstatus:", err)
	os.Exit(2)
}
