/**
 * The console's shell: login, logout, the section router (`#/dashboard`, `#/agents`, ...) and the
 * context each page gets. A page module exports `render(ctx)`; ctx gives it its container, a place
 * for errors and notices, and `every(ms, fn)` for polling that stops when the user leaves the page.
 */
import { api, ApiError, setToken, token } from './api.js';
import { field, h, replace } from './dom.js';

const PAGES = {
  dashboard: { title: 'Dashboard', load: () => import('./pages/dashboard.js') },
  agents: { title: 'Agents', load: () => import('./pages/agents.js') },
  vaults: { title: 'Vaults', load: () => import('./pages/vaults.js') },
  policies: { title: 'Policies', load: () => import('./pages/policies.js') },
  backups: { title: 'Backups', load: () => import('./pages/backups.js') },
  jobs: { title: 'Jobs', load: () => import('./pages/jobs.js') },
};

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const logoutButton = document.getElementById('logout');
/** Bumped at every navigation: pollers of an older page see it and stop. */
let generation = 0;

logoutButton.addEventListener('click', () => {
  setToken(null);
  go('#/login');
});
window.addEventListener('hashchange', route);
route();

/** Shows the section of `hash` (the hashchange does it, or a direct call when it is current already). */
function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function route() {
  generation += 1;
  const name = location.hash.replace(/^#\/?/, '').split('?')[0];
  if (!token()) {
    showLogin(undefined, PAGES[name] ? name : 'dashboard');
    return;
  }
  const page = PAGES[name] ? name : 'dashboard';
  if (page !== name) {
    history.replaceState(null, '', `#/${page}`);
  }
  showPage(page, generation);
}

function setChrome(loggedIn, current) {
  nav.hidden = !loggedIn;
  logoutButton.hidden = !loggedIn;
  for (const a of nav.querySelectorAll('a')) {
    if (a.getAttribute('href') === `#/${current}`) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

/** The login form; once logged in, the user lands on `next`. */
function showLogin(message, next = 'dashboard') {
  setChrome(false);
  document.title = 'Log in · Cairn console';
  const input = h('input', { type: 'password', name: 'token', autocomplete: 'current-password', required: true, spellcheck: 'false' });
  const error = h('div', { class: 'error', role: 'alert' });
  if (message) error.textContent = message;
  const button = h('button', { type: 'submit' }, 'Log in');
  const form = h(
    'form',
    { class: 'card login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Log in'),
    h('p', {}, 'Use the admin API token the control plane printed when it first started.'),
    field('Admin API token', input),
    error,
    h('div', { class: 'actions' }, button),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    button.disabled = true;
    try {
      const value = input.value.trim();
      await api('GET', '/v1/agents', undefined, value);
      setToken(value);
      go(`#/${next}`);
    } catch (err) {
      error.textContent = describe(err);
    } finally {
      button.disabled = false;
    }
  });
  replace(main, form);
  input.focus();
}

async function showPage(name, gen) {
  const page = PAGES[name];
  setChrome(true, name);
  document.title = `${page.title} · Cairn console`;
  const errorBox = h('div', { class: 'error', role: 'alert' });
  const noticeBox = h('div', { class: 'notice', role: 'status' });
  const body = h('div', { class: 'page-body' });
  replace(main, h('h1', {}, page.title), errorBox, noticeBox, body);
  const ctx = {
    body,
    /** Shows an error (an ApiError's code and message); a refused token sends the user to the login. */
    fail(err) {
      if (gen !== generation) return;
      if (err instanceof ApiError && err.code === 'UNAUTHENTICATED') {
        setToken(null);
        generation += 1;
        showLogin(`Logged out: ${describe(err)}`, name);
        return;
      }
      errorBox.textContent = describe(err);
      noticeBox.textContent = '';
    },
    notice(text) {
      if (gen !== generation) return;
      errorBox.textContent = '';
      noticeBox.textContent = text;
    },
    clear() {
      errorBox.textContent = '';
      noticeBox.textContent = '';
    },
    /** True while the user is still on this page. */
    get current() {
      return gen === generation;
    },
    /** Runs `fn` every `ms` until the user leaves the page; a failure is shown and polling goes on. */
    every(ms, fn) {
      const tick = async () => {
        if (gen !== generation) return;
        try {
          await fn();
        } catch (err) {
          ctx.fail(err);
        }
        if (gen === generation) setTimeout(tick, ms);
      };
      setTimeout(tick, ms);
    },
    /** Runs an API action: shows its error, or `done` as a notice; returns whether it succeeded. */
    async run(action, done) {
      try {
        const result = await action();
        if (done) ctx.notice(typeof done === 'function' ? done(result) : done);
        return true;
      } catch (err) {
        ctx.fail(err);
        return false;
      }
    },
  };
  try {
    const module = await page.load();
    if (gen !== generation) return;
    await module.render(ctx);
  } catch (err) {
    ctx.fail(err);
  }
}

/** An error as the user reads it: the API's code and message. */
export function describe(err) {
  if (err instanceof ApiError) return `${err.code}: ${err.message}`;
  return `Error: ${err && err.message ? err.message : String(err)}`;
}
