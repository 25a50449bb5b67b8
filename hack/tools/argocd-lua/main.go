// Command argocd-lua runs Argo CD resource-customization Lua scripts (a health check, an
// action discovery script, resource actions) the way Argo CD runs them, so that Rewind's tests
// see what Argo CD would show.
//
// It does not import Argo CD (its modules do not build here); it sets up the interpreter the
// same way, with the same libraries at the versions argo-cd's go.mod pins. What it mirrors was
// read in argoproj/argo-cd util/lua/lua.go and util/lua/oslib_safe.go at tag v3.5.1 (commit
// 109ca7ca71139e514114499d294a492e7910a965), checked again at master 37ee0097cf85 (2026-08-22),
// which only adds a compiled-script cache; and in server/application/application.go
// (RunResourceActionV2, patchResource) for what Argo CD does with an action's result:
//
//   - gopher-lua v1.1.2 with SkipOpenLibs unless resource.customizations.useOpenLibs is set;
//     then only package, base, table and Argo CD's "safe os" are opened, in that order. No
//     string, no math, no coroutine, no io, no debug, no channel.
//   - The safe os is registered with RegisterModule(TabLibName, ...) (sic: "table", already
//     loaded), which is a no-op: the global `os` stays nil. Only `require("os")` reaches
//     os.time and os.date, through package.preload. This program does the same.
//   - Globals: `obj` (the live object) and `actionParams` (a table, empty here). No json module.
//   - The object goes in through Argo CD's decodeValue: numbers become Lua numbers, a null map
//     value is no key at all, a null array element is skipped, an empty map or list is an
//     empty table.
//   - A 1 s context timeout per script run; run-time errors lose their stack trace.
//   - Results come back through layeh.com/gopher-json's Encode (an empty table is `[]`, a
//     table with mixed keys or reused twice is an error) and encoding/json, then are
//     validated like ExecuteHealthLua, ExecuteResourceActionDiscovery and
//     ExecuteResourceAction do (status codes, empty tables, the cleaning of `{}` turned `[]`).
//   - For a patch action it also computes the JSON merge patch Argo CD would send to the API
//     server (jsonpatch.CreateMergePatch of the live and the returned object).
//
// Input (stdin): a JSON array of jobs
//
//	{"kind": "health"|"discovery"|"action", "scriptFile": "path.lua" or "script": "source",
//	 "obj": {...}, "useOpenLibs": false}
//
// Output (stdout): a JSON array with one result per job, in order:
//
//	health:    {"health": {"status": ..., "message": ...}}
//	discovery: {"actions": [{"name": ..., "disabled": ..., "displayName": ..., ...}]} (by name)
//	action:    {"impacted": [{"operation": "patch", "resource": {...}, "mergePatch": {...}}]}
//
// and "error" when Argo CD would have failed (for health, "health" then holds the Unknown
// status Argo CD shows). The exit status is 0 unless the input itself is unusable.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	jsonpatch "github.com/evanphx/json-patch"
	lua "github.com/yuin/gopher-lua"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	luajson "layeh.com/gopher-json"
)

type job struct {
	Kind        string          `json:"kind"`
	Script      string          `json:"script"`
	ScriptFile  string          `json:"scriptFile"`
	Obj         json.RawMessage `json:"obj"`
	UseOpenLibs bool            `json:"useOpenLibs"`
}

// healthStatus has the JSON shape of gitops-engine's health.HealthStatus.
type healthStatus struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

// resourceAction has the JSON shape of argo-cd's v1alpha1.ResourceAction.
type resourceAction struct {
	Name        string                `json:"name,omitempty"`
	Params      []resourceActionParam `json:"params,omitempty"`
	Disabled    bool                  `json:"disabled,omitempty"`
	IconClass   string                `json:"iconClass,omitempty"`
	DisplayName string                `json:"displayName,omitempty"`
}

type resourceActionParam struct {
	Name string `json:"name,omitempty"`
}

type impactedResource struct {
	Resource   map[string]any `json:"resource"`
	Operation  string         `json:"operation"`
	MergePatch map[string]any `json:"mergePatch,omitempty"`
}

type result struct {
	Health   *healthStatus      `json:"health,omitempty"`
	Actions  *[]resourceAction  `json:"actions,omitempty"`
	Impacted []impactedResource `json:"impacted,omitempty"`
	Error    string             `json:"error,omitempty"`
}

// validHealth are the codes isValidHealthStatusCode accepts.
var validHealth = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true,
	"Missing": true,
}

func main() {
	if len(os.Args) > 1 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua < jobs.json (see the comment at the top of main.go)")
		os.Exit(2)
	}
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var jobs []job
	if err := json.Unmarshal(input, &jobs); err != nil {
		fail(fmt.Errorf("stdin is not a JSON array of jobs: %w", err))
	}
	scripts := map[string]string{}
	results := make([]result, 0, len(jobs))
	for i, j := range jobs {
		script := j.Script
		if j.ScriptFile != "" {
			if _, ok := scripts[j.ScriptFile]; !ok {
				data, err := os.ReadFile(j.ScriptFile)
				if err != nil {
					fail(fmt.Errorf("job %d: %w", i, err))
				}
				scripts[j.ScriptFile] = string(data)
			}
			script = scripts[j.ScriptFile]
		}
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(j.Obj); err != nil {
			fail(fmt.Errorf("job %d: obj: %w", i, err))
		}
		switch j.Kind {
		case "health":
			results = append(results, runHealth(obj, script, j.UseOpenLibs))
		case "discovery":
			results = append(results, runDiscovery(obj, script, j.UseOpenLibs))
		case "action":
			results = append(results, runAction(obj, script, j.UseOpenLibs))
		default:
			fail(fmt.Errorf("job %d: kind %q is not health, discovery or action", i, j.Kind))
		}
	}
	out := json.NewEncoder(os.Stdout)
	if err := out.Encode(results); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "argocd-lua:", err)
	os.Exit(2)
}

// runLua sets up a state as Argo CD's VM.runLuaWithResourceActionParameters does (no action
// parameters), runs the script and returns the value on top of the stack.
func runLua(obj *unstructured.Unstructured, script string, useOpenLibs bool) (lua.LValue, error) {
	l := lua.NewState(lua.Options{SkipOpenLibs: !useOpenLibs})
	defer l.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.OsLibName, openSafeOs},
	} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.open), NRet: 0, Protect: true},
			lua.LString(lib.name)); err != nil {
			panic(err)
		}
	}
	l.PreloadModule(lua.OsLibName, safeOsLoader)

	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)

	l.SetGlobal("actionParams", l.CreateTable(0, 0))
	l.SetGlobal("obj", toLua(l, obj.Object))

	fn, err := l.LoadString(script)
	if err == nil {
		l.Push(fn)
		err = l.PCall(0, lua.MultRet, nil)
	}
	var apiErr *lua.ApiError
	if errors.As(err, &apiErr) && apiErr.Type == lua.ApiErrorRun {
		apiErr.StackTrace = ""
		err = apiErr
	}
	if err != nil {
		return nil, err
	}
	return l.Get(-1), nil
}

// openSafeOs registers os.time and os.date exactly as Argo CD's OpenSafeOs does: under the
// name of the table library. The table library is already loaded, so nothing is registered
// and no global `os` exists; require("os") (package.preload, safeOsLoader) still works.
func openSafeOs(l *lua.LState) int {
	l.Push(l.RegisterModule(lua.TabLibName, safeOsFuncs()))
	return 1
}

func safeOsLoader(l *lua.LState) int {
	l.Push(l.SetFuncs(l.NewTable(), safeOsFuncs()))
	return 1
}

func safeOsFuncs() map[string]lua.LGFunction {
	return map[string]lua.LGFunction{"time": osTime, "date": osDate}
}

// osTime and osDate stand in for Argo CD's: same names and arguments, written here from their
// documented behaviour (Rewind's scripts use neither; a test checks that they do not).
func osTime(l *lua.LState) int {
	if l.GetTop() == 0 {
		l.Push(lua.LNumber(time.Now().Unix()))
		return 1
	}
	tbl := l.CheckTable(1)
	field := func(name string, def int) int {
		if n, ok := tbl.RawGetString(name).(lua.LNumber); ok {
			return int(n)
		}
		return def
	}
	t := time.Date(field("year", -1), time.Month(field("month", -1)), field("day", -1),
		field("hour", 12), field("min", 0), field("sec", 0), 0, time.Local)
	l.Push(lua.LNumber(t.Unix()))
	return 1
}

func osDate(l *lua.LState) int {
	t := time.Now()
	format := "%c"
	if l.GetTop() >= 1 {
		format = l.CheckString(1)
		if len(format) > 0 && format[0] == '!' {
			t = t.UTC()
			format = format[1:]
		}
		if l.GetTop() >= 2 {
			t = time.Unix(l.CheckInt64(2), 0)
		}
		if len(format) >= 2 && format[:2] == "*t" {
			tbl := l.NewTable()
			for k, v := range map[string]int{"year": t.Year(), "month": int(t.Month()),
				"day": t.Day(), "hour": t.Hour(), "min": t.Minute(), "sec": t.Second(),
				"wday": int(t.Weekday()) + 1, "yday": 0} {
				tbl.RawSetString(k, lua.LNumber(v))
			}
			tbl.RawSetString("isdst", lua.LFalse)
			l.Push(tbl)
			return 1
		}
	}
	layouts := map[byte]string{'Y': "2006", 'm': "01", 'd': "02", 'H': "15", 'M': "04", 'S': "05",
		'F': "2006-01-02", 'y': "06", 'z': "-0700", 'Z': "MST", 'c': "02 Jan 06 15:04 MST"}
	var out bytes.Buffer
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' || i == len(format)-1 {
			out.WriteByte(c)
			continue
		}
		i++
		if layout, ok := layouts[format[i]]; ok {
			out.WriteString(t.Format(layout))
		} else if format[i] == '%' {
			out.WriteByte('%')
		} else {
			out.WriteByte('%')
			out.WriteByte(format[i])
		}
	}
	l.Push(lua.LString(out.String()))
	return 1
}

// toLua converts a decoded object as Argo CD's decodeValue does.
func toLua(l *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		return lua.LString(v)
	case float64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case int32:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case []any:
		arr := l.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(toLua(l, item)) // Append ignores nil
		}
		return arr
	case map[string]any:
		tbl := l.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), toLua(l, item)) // setting nil sets nothing
		}
		return tbl
	}
	return lua.LNil
}

func runHealth(obj *unstructured.Unstructured, script string, useOpenLibs bool) result {
	hs, err := executeHealth(obj, script, useOpenLibs)
	if err != nil {
		// gitops-engine's GetResourceHealth shows a failed health script as Unknown.
		return result{Health: &healthStatus{Status: "Unknown", Message: err.Error()}, Error: err.Error()}
	}
	return result{Health: hs}
}

// executeHealth validates the result like ExecuteHealthLua.
func executeHealth(obj *unstructured.Unstructured, script string, useOpenLibs bool) (*healthStatus, error) {
	ret, err := runLua(obj, script, useOpenLibs)
	if err != nil {
		return nil, err
	}
	switch ret.Type() {
	case lua.LTNil:
		return &healthStatus{}, nil
	case lua.LTTable:
	default:
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	data, err := luajson.Encode(ret)
	if err != nil {
		return nil, err
	}
	hs := &healthStatus{}
	if err := json.Unmarshal(data, hs); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return &healthStatus{}, nil // Argo CD's "empty object" case: any type error
		}
		return nil, err
	}
	if !validHealth[hs.Status] {
		return &healthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return hs, nil
}

// runDiscovery is ExecuteResourceActionDiscovery for one script.
func runDiscovery(obj *unstructured.Unstructured, script string, useOpenLibs bool) result {
	actions, err := executeDiscovery(obj, script, useOpenLibs)
	if err != nil {
		return result{Error: err.Error()}
	}
	sort.Slice(actions, func(i, j int) bool { return actions[i].Name < actions[j].Name })
	return result{Actions: &actions}
}

func executeDiscovery(obj *unstructured.Unstructured, script string, useOpenLibs bool) ([]resourceAction, error) {
	ret, err := runLua(obj, script, useOpenLibs)
	if err != nil {
		return nil, err
	}
	if ret.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	data, err := luajson.Encode(ret)
	if err != nil {
		return nil, fmt.Errorf("error in converting to lua table: %w", err)
	}
	actions := []resourceAction{}
	if string(data) == "[]" {
		return actions, nil
	}
	byName := map[string]any{}
	if err := json.Unmarshal(data, &byName); err != nil {
		return nil, fmt.Errorf("error unmarshaling action table: %w", err)
	}
	for name, value := range byName {
		action := resourceAction{Name: name, Disabled: disabled(value)}
		if _, empty := value.([]any); !empty {
			raw, err := json.Marshal(value)
			if err != nil {
				return nil, fmt.Errorf("error marshaling resource action: %w", err)
			}
			if err := json.Unmarshal(raw, &action); err != nil {
				return nil, fmt.Errorf("error unmarshaling resource action: %w", err)
			}
		}
		actions = append(actions, action)
	}
	return actions, nil
}

// disabled is Argo CD's isActionDisabled: a boolean "disabled" field, false otherwise.
func disabled(value any) bool {
	fields, ok := value.(map[string]any)
	if !ok {
		return false
	}
	b, ok := fields["disabled"].(bool)
	return ok && b
}

// runAction is ExecuteResourceAction, plus the merge patch patchResource would send.
func runAction(obj *unstructured.Unstructured, script string, useOpenLibs bool) result {
	impacted, err := executeAction(obj, script, useOpenLibs)
	if err != nil {
		return result{Error: err.Error()}
	}
	live, err := json.Marshal(obj)
	if err != nil {
		return result{Error: err.Error()}
	}
	for i := range impacted {
		if impacted[i].Operation != "patch" {
			continue
		}
		updated, err := json.Marshal(impacted[i].Resource)
		if err != nil {
			return result{Error: err.Error()}
		}
		patch, err := jsonpatch.CreateMergePatch(live, updated)
		if err != nil {
			return result{Error: fmt.Sprintf("error calculating merge patch: %v", err)}
		}
		impacted[i].MergePatch = map[string]any{}
		if err := json.Unmarshal(patch, &impacted[i].MergePatch); err != nil {
			return result{Error: err.Error()}
		}
	}
	return result{Impacted: impacted}
}

func executeAction(obj *unstructured.Unstructured, script string, useOpenLibs bool) ([]impactedResource, error) {
	ret, err := runLua(obj, script, useOpenLibs)
	if err != nil {
		return nil, err
	}
	if ret.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type())
	}
	data, err := luajson.Encode(ret)
	if err != nil {
		return nil, err
	}
	if len(data) < 2 {
		return nil, errors.New("Lua output was not a valid json object or array")
	}
	var impacted []impactedResource
	if data[0] == '[' && data[len(data)-1] == ']' {
		// New-style output: a list of {operation: create|patch, resource: {...}}.
		var list []struct {
			Resource  *unstructured.Unstructured `json:"resource"`
			Operation string                     `json:"operation"`
		}
		if err := json.Unmarshal(data, &list); err != nil {
			return nil, err
		}
		for _, item := range list {
			if item.Operation != "create" && item.Operation != "patch" {
				return nil, fmt.Errorf("unsupported operation: %q", item.Operation)
			}
			var resource map[string]any
			if item.Resource != nil {
				resource = item.Resource.Object
			}
			impacted = append(impacted, impactedResource{Resource: resource, Operation: item.Operation})
		}
	} else {
		// Old-style output: the object itself, to be patched.
		updated := &unstructured.Unstructured{}
		if err := updated.UnmarshalJSON(data); err != nil {
			return nil, err
		}
		impacted = append(impacted, impactedResource{Resource: updated.Object, Operation: "patch"})
	}
	for i := range impacted {
		if impacted[i].Operation == "patch" && impacted[i].Resource != nil {
			impacted[i].Resource = restoreEmptyMaps(impacted[i].Resource, obj.Object)
		}
	}
	return impacted, nil
}

// restoreEmptyMaps undoes what the Lua round trip does to empty maps, as Argo CD's
// cleanReturnedObj does: Lua has one empty table, which encodes as `[]`, so where the live
// object had a map and the result has an empty list, the map comes back (recursively, also
// inside lists of the same position).
func restoreEmptyMaps(updated, live map[string]any) map[string]any {
	for key, newValue := range updated {
		oldValue, ok := live[key]
		if !ok {
			continue
		}
		switch n := newValue.(type) {
		case map[string]any:
			if o, ok := oldValue.(map[string]any); ok {
				updated[key] = restoreEmptyMaps(n, o)
			}
		case []any:
			switch o := oldValue.(type) {
			case map[string]any:
				if len(n) == 0 {
					updated[key] = map[string]any{}
				}
			case []any:
				updated[key] = restoreEmptyMapsInList(n, o)
			}
		}
	}
	return updated
}

func restoreEmptyMapsInList(updated, live []any) []any {
	for i := range updated {
		if i >= len(live) {
			break
		}
		switch n := updated[i].(type) {
		case map[string]any:
			if o, ok := live[i].(map[string]any); ok {
				updated[i] = restoreEmptyMaps(n, o)
			}
		case []any:
			if o, ok := live[i].([]any); ok {
				updated[i] = restoreEmptyMapsInList(n, o)
			}
		}
	}
	return updated
}
