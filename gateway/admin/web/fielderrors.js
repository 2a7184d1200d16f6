// Problems shown beside their fields, all at once: the error text, aria-invalid, the first
// invalid field focused; each cleared when its field is edited (or re-checked then).

// A field: {error: id of its error text, controls: () => the elements it marks invalid}.
function controlsOf(field) {
  return field.controls().filter(Boolean);
}

export function clearFieldError(field) {
  const error = document.getElementById(field.error);
  error.hidden = true;
  error.textContent = "";
  for (const control of controlsOf(field)) control.removeAttribute("aria-invalid");
}

function describedBy(control, id) {
  const ids = (control.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean);
  if (!ids.includes(id)) control.setAttribute("aria-describedby", [...ids, id].join(" "));
}

export function setFieldError(field, message) {
  const error = document.getElementById(field.error);
  error.textContent = message;
  error.hidden = false;
  for (const control of controlsOf(field)) {
    control.setAttribute("aria-invalid", "true");
    describedBy(control, field.error);
  }
}

// Show `problems` ({field, message}) beside the `fields` named (in the form's order); others
// go to `formError` (if any). Focus the first invalid field in the form's order; return the count shown.
export function showProblems(fields, problems, formError) {
  const byField = new Map();
  const general = [];
  for (const problem of problems) {
    if (problem.field in fields && !byField.has(problem.field)) byField.set(problem.field, problem.message);
    else if (!(problem.field in fields)) general.push(problem.message);
  }
  let first = null;
  for (const [name, field] of Object.entries(fields)) {
    if (!byField.has(name)) continue;
    setFieldError(field, byField.get(name));
    first = first || controlsOf(field).find((control) => !control.disabled) || null;
  }
  if (formError) {
    formError.textContent = general.join(" ");
    formError.hidden = general.length === 0;
  }
  if (first) first.focus();
  else if (general.length && formError) formError.scrollIntoView({ block: "nearest" });
  return byField.size + general.length;
}

// On every edit of a field, run its `check` (a message or null) if it has one, else clear it.
export function clearWhenFixed(fields, checks = {}) {
  for (const [name, field] of Object.entries(fields)) {
    const recheck = () => {
      if (document.getElementById(field.error).hidden) return;
      const message = checks[name] ? checks[name]() : null;
      if (message) setFieldError(field, message);
      else clearFieldError(field);
    };
    for (const root of field.listen()) {
      root.addEventListener("input", recheck);
      root.addEventListener("change", recheck);
    }
  }
}
