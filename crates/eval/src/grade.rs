//! LLM judges for MM-Vet, MMVP and HallusionBench: the official grading prompts written out as
//! requests, and a
//! client for any OpenAI-compatible chat-completions endpoint (retries with back-off, a request
//! rate limit) that appends one grade per line, so an interrupted grading resumes where it stopped.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use crate::Error;
use crate::score::{Answers, id_key};

/// MM-Vet's grading prompt (the benchmark's `mm-vet_evaluator`), few-shot examples included; the
/// case to grade is appended as `question | ground truth | prediction | `.
pub const MMVET_PROMPT: &str = "Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
";

/// What MM-Vet's evaluator appends when a reply was not a score.
const MMVET_RETRY_SUFFIX: &str = "\nPredict the correctness of the answer (digit): ";

/// Which judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judge {
    /// A 0..1 correctness score.
    MmVet,
    /// A yes/no verdict.
    Mmvp,
    /// HallusionBench's correct / incorrect / unclear (lmms-eval's `evaluate_by_chatgpt`).
    HallusionBench,
    /// VLMEvalKit's choice extractor for answers its rules cannot read (MMStar, AI2D, MMMU).
    ChoiceExtractor,
}

/// Choice-extractor requests: for each answered multiple-choice record whose answer VLMEvalKit's
/// `can_infer` cannot read, its extractor prompt (`bench`: mmstar, ai2d or mmmu).
pub fn choice_requests(
    answers: &mut Answers,
    records: &[crate::records::Record],
    bench: &str,
) -> Vec<GradeRequest> {
    use crate::score::vlmevalkit;
    let by_id = answers.by_id();
    records
        .iter()
        .filter_map(|r| {
            let item = vlmevalkit::mcq_item(bench, r).ok()?;
            let answer = by_id.get(&item.id)?;
            if vlmevalkit::can_infer(&answer.text, &item.choices).is_some() {
                return None;
            }
            Some(GradeRequest {
                question_id: json!(item.id),
                prompt: vlmevalkit::extractor_prompt(&item, &answer.text),
                choices: item.choices,
            })
        })
        .collect()
}

/// HallusionBench's judge prompt in lmms-eval (`tasks/hallusion_bench/utils.py`), before the
/// question; then `\nReference answer: …\nPrediction answer:…\nOutput:`.
pub const HALLUSION_PROMPT: &str = "Imagine you are an intelligent teacher. Thoroughly read the question, reference answer and the prediction answer to ensure a clear understanding of the information provided. Assess the correctness of the predictions. If the prediction answer does not conflict with the reference answer, please generate \u{201c}correct\u{201d}. If the prediction answer conflict with the reference answer, please generate \u{201c}incorrect\u{201d}. If the prediction answer is unclear about the answer, please generate \"unclear\". \n\n Question:";

/// HallusionBench requests: for each answered record, the judge prompt with the question, the
/// reference answer's explanation (`gt_answer_details`; VLMEvalKit's rows have only `answer`) and
/// the model's answer.
pub fn hallusion_requests(
    answers: &mut Answers,
    records: &[crate::records::Record],
) -> Vec<GradeRequest> {
    use crate::score::{hallusion, text_field};
    let by_id = answers.by_id();
    records
        .iter()
        .filter_map(|r| {
            let q = hallusion::Question::from_record(r).ok()?;
            let answer = by_id.get(&q.id)?;
            let question = text_field(r, &["question"]).ok()?;
            let reference = text_field(r, &["gt_answer_details", "answer"]).ok()?;
            Some(GradeRequest {
                question_id: json!(q.id),
                prompt: format!(
                    "{HALLUSION_PROMPT}{question}\nReference answer: {reference}\nPrediction answer:{}\nOutput:",
                    answer.text
                ),
                choices: Vec::new(),
            })
        })
        .collect()
}

/// lmms-eval's reading of a HallusionBench verdict: "incorrect" anywhere (any case) is 0, else
/// "correct" is 1, else 2 (unclear).
pub fn parse_hallusion(content: &str) -> u8 {
    let lower = content.to_lowercase();
    if lower.contains("incorrect") {
        0
    } else if lower.contains("correct") {
        1
    } else {
        2
    }
}

/// One request to the judge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GradeRequest {
    /// The question id the grade is for.
    pub question_id: Value,
    /// The prompt.
    pub prompt: String,
    /// The choices a choice extractor's reply is read against (empty for the other judges).
    #[serde(skip)]
    pub choices: Vec<(char, String)>,
}

/// MM-Vet requests: for each question of `mm-vet.json` with an answer, the official prompt with
/// `question | answer (spaces around <AND>/<OR>) | prediction | `.
pub fn mmvet_requests(answers: &mut Answers, annotations: &Value) -> Vec<GradeRequest> {
    let by_id = answers.by_id();
    let empty = serde_json::Map::new();
    annotations
        .as_object()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|(id, q)| {
            let answer = by_id.get(id)?;
            let gt = q
                .get("answer")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .replace("<AND>", " <AND> ")
                .replace("<OR>", " <OR> ");
            let question = q
                .get("question")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Some(GradeRequest {
                question_id: json!(id),
                prompt: format!("{MMVET_PROMPT}\n{question} | {gt} | {} | ", answer.text),
                choices: Vec::new(),
            })
        })
        .collect()
}

/// MMVP requests: MMVP's grader question for each answered row of `Questions.csv` (`question` is
/// what the model was asked, `correct` the row's `Correct Answer`).
pub fn mmvp_requests(answers: &mut Answers, rows: &[(Value, String, String)]) -> Vec<GradeRequest> {
    let by_id = answers.by_id();
    rows.iter()
        .filter_map(|(id, question, correct)| {
            let answer = by_id.get(&id_key(id)?)?;
            Some(GradeRequest {
                question_id: id.clone(),
                prompt: format!(
                    "Given the following question {question}, the correct answer is {correct}. Does the following answer correctly answers the question, answer:{}?",
                    answer.text
                ),
                choices: Vec::new(),
            })
        })
        .collect()
}

/// Writes requests as JSON lines (for a user who grades elsewhere).
pub fn write_requests(requests: &[GradeRequest], path: &Path) -> Result<(), Error> {
    let text: String = requests
        .iter()
        .map(|r| serde_json::to_string(r).expect("serialises") + "\n")
        .collect();
    std::fs::write(path, text).map_err(|e| Error::File(format!("{}: {e}", path.display())))
}

/// An OpenAI-compatible chat-completions endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The API base, e.g. `https://api.openai.com/v1` (`/chat/completions` is appended).
    pub url: String,
    /// The judge model, e.g. `gpt-4-0613`.
    pub model: String,
    /// Sent as a bearer token when set.
    pub api_key: Option<String>,
    /// Tries per request on network errors, 429 and 5xx replies.
    pub max_tries: u32,
    /// First back-off; it doubles after each failed try (a `Retry-After` header wins).
    pub backoff: Duration,
    /// At most this many requests per minute.
    pub requests_per_minute: Option<f64>,
}

/// A client with its rate limit.
pub struct Client {
    endpoint: Endpoint,
    agent: ureq::Agent,
    last: Option<Instant>,
    /// Requests sent (tries included).
    pub requests: usize,
}

impl Client {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Client {
            endpoint,
            agent,
            last: None,
            requests: 0,
        }
    }

    /// The judge's reply to `prompt`.
    pub fn complete(
        &mut self,
        prompt: &str,
        temperature: f64,
        max_tokens: u32,
    ) -> Result<String, Error> {
        let url = format!(
            "{}/chat/completions",
            self.endpoint.url.trim_end_matches('/')
        );
        let body = json!({
            "model": self.endpoint.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": temperature,
            "max_tokens": max_tokens,
        });
        let mut wait = self.endpoint.backoff;
        let mut last_error = String::new();
        for _ in 0..self.endpoint.max_tries.max(1) {
            if let (Some(rpm), Some(last)) = (self.endpoint.requests_per_minute, self.last) {
                let gap = Duration::from_secs_f64(60.0 / rpm.max(1e-6));
                if let Some(rest) = gap.checked_sub(last.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
            self.last = Some(Instant::now());
            self.requests += 1;
            let mut request = self
                .agent
                .post(&url)
                .header("Content-Type", "application/json");
            if let Some(key) = &self.endpoint.api_key {
                request = request.header("Authorization", &format!("Bearer {key}"));
            }
            match request.send(body.to_string()) {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let retry_after = response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<f64>().ok());
                    let text = response.body_mut().read_to_string().unwrap_or_default();
                    if status == 200 {
                        let v: Value = serde_json::from_str(&text)
                            .map_err(|e| Error::File(format!("{url}: reply is not JSON: {e}")))?;
                        return v
                            .pointer("/choices/0/message/content")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .ok_or_else(|| {
                                Error::File(format!(
                                    "{url}: reply has no choices[0].message.content"
                                ))
                            });
                    }
                    last_error = format!(
                        "HTTP {status}: {}",
                        text.chars().take(200).collect::<String>()
                    );
                    if status != 429 && status < 500 {
                        return Err(Error::File(format!("{url}: {last_error}")));
                    }
                    if let Some(s) = retry_after {
                        wait = Duration::from_secs_f64(s);
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
            std::thread::sleep(wait);
            wait *= 2;
        }
        Err(Error::File(format!(
            "{url}: gave up after {} tries: {last_error}",
            self.endpoint.max_tries.max(1)
        )))
    }
}

/// What a grading did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GradeStats {
    /// Requests graded now.
    pub graded: usize,
    /// Requests already in the grades file.
    pub already_graded: usize,
    /// Replies that never parsed (scored 0 / wrong, as the official scripts do).
    pub unparsed: usize,
}

/// MM-Vet's reading of a reply: its first space-separated word as a number in 0..1.
pub fn parse_mmvet(content: &str) -> Option<f64> {
    let word = content.split(' ').next().unwrap_or_default().trim();
    word.parse::<f64>().ok().filter(|s| (0.0..=1.0).contains(s))
}

/// MMVP's reading of a reply: exactly `yes` or `no`, any case.
pub fn parse_mmvp(content: &str) -> Option<bool> {
    match content.to_lowercase().as_str() {
        "yes" => Some(true),
        "no" => Some(false),
        _ => None,
    }
}

/// Grades every request not yet in `grades`, appending `{"question_id", "score"}` (MM-Vet) or
/// `{"question_id", "correct"}` (MMVP) lines with the judge's reply. MM-Vet retries an
/// unparsable reply up to five times with the official follow-up and rising temperature, then
/// scores 0; MMVP counts an unparsable reply as wrong.
pub fn grade(
    judge: Judge,
    requests: &[GradeRequest],
    client: &mut Client,
    grades: &Path,
) -> Result<GradeStats, Error> {
    let io = |e: std::io::Error| Error::File(format!("{}: {e}", grades.display()));
    let done: HashSet<String> = crate::runner::answered_ids(grades)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(grades)
        .map_err(io)?;
    let mut stats = GradeStats::default();
    for r in requests {
        if id_key(&r.question_id).is_some_and(|k| done.contains(&k)) {
            stats.already_graded += 1;
            continue;
        }
        let line = match judge {
            Judge::MmVet => {
                let mut content = client.complete(&r.prompt, 0.0, 3)?;
                let mut score = parse_mmvet(&content);
                let mut temperature = 0.0;
                let mut tries = 1;
                while score.is_none() && tries < 5 {
                    temperature += 0.5;
                    tries += 1;
                    let prompt = format!("{}{MMVET_RETRY_SUFFIX}", r.prompt);
                    content = client.complete(&prompt, temperature, 3)?;
                    score = parse_mmvet(&content);
                }
                stats.unparsed += usize::from(score.is_none());
                json!({"question_id": r.question_id, "score": score.unwrap_or(0.0), "content": content})
            }
            Judge::HallusionBench => {
                // lmms-eval asks with max_tokens 16 at the API's default temperature; we ask at
                // 0 so that a rerun grades alike.
                let content = client.complete(&r.prompt, 0.0, 16)?;
                json!({"question_id": r.question_id, "correctness": parse_hallusion(&content), "content": content})
            }
            Judge::ChoiceExtractor => {
                // VLMEvalKit asks up to three times and reads each reply with `can_infer`; where
                // none reads, it picks a letter at random: we record none (scored `Z`, wrong).
                let mut letter = None;
                let mut content = String::new();
                for _ in 0..3 {
                    content = client.complete(&r.prompt, 0.0, 16)?;
                    letter = crate::score::vlmevalkit::can_infer(&content, &r.choices);
                    if letter.is_some() {
                        break;
                    }
                }
                stats.unparsed += usize::from(letter.is_none());
                json!({"question_id": r.question_id, "letter": letter.map(String::from), "content": content})
            }
            Judge::Mmvp => {
                let content = client.complete(&r.prompt, 0.0, 5)?;
                let verdict = parse_mmvp(content.trim());
                stats.unparsed += usize::from(verdict.is_none());
                json!({"question_id": r.question_id, "correct": verdict == Some(true), "content": content})
            }
        };
        writeln!(file, "{line}")
            .and_then(|()| file.flush())
            .map_err(io)?;
        stats.graded += 1;
    }
    Ok(stats)
}

/// MMVP's rows as `(Index, "<Question> <Options>", Correct Answer)`.
pub fn mmvp_rows(csv: &Path) -> Result<Vec<(Value, String, String)>, Error> {
    let questions = crate::runner::read_questions(crate::runner::Bench::Mmvp, csv)?;
    let text =
        std::fs::read_to_string(csv).map_err(|e| Error::File(format!("{}: {e}", csv.display())))?;
    let answers: BTreeMap<String, String> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f = crate::runner::csv_fields(l);
            Some((f.first()?.trim().to_string(), f.get(3)?.trim().to_string()))
        })
        .collect();
    Ok(questions
        .into_iter()
        .map(|q| {
            let key = id_key(&q.question_id).unwrap_or_default();
            let correct = answers.get(&key).cloned().unwrap_or_default();
            (q.question_id, q.text, correct)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;

    /// A loopback chat-completions server that answers with `replies` in turn (status, content)
    /// and records the prompts it received.
    fn stub(replies: Vec<(u16, &'static str)>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut prompts = Vec::new();
            for (status, content) in replies {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap();
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let request: Value = serde_json::from_slice(&body).unwrap();
                prompts.push(
                    request["messages"][0]["content"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                );
                let reply =
                    json!({"choices": [{"message": {"role": "assistant", "content": content}}]})
                        .to_string();
                let mut stream = stream;
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                )
                .unwrap();
            }
            prompts
        });
        (url, handle)
    }

    fn endpoint(url: String) -> Endpoint {
        Endpoint {
            url,
            model: "judge".into(),
            api_key: Some("k".into()),
            max_tries: 3,
            backoff: Duration::from_millis(10),
            requests_per_minute: None,
        }
    }

    #[test]
    fn mmvet_grades_retry_server_errors_and_unparsable_replies_then_resume() {
        let dir = std::env::temp_dir().join(format!("llava-grade-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ann = json!({
            "v1_0": {"question": "What is x?", "answer": "-1<AND>-5", "capability": ["math"]},
            "v1_1": {"question": "Colour?", "answer": "red", "capability": ["rec"]},
        });
        let mut answers = Answers::parse(
            "{\"question_id\": \"v1_0\", \"text\": \"x = -1\"}\n{\"question_id\": \"v1_1\", \"text\": \"red\"}\n",
        );
        let requests = mmvet_requests(&mut answers, &ann);
        assert!(
            requests[0]
                .prompt
                .ends_with("What is x? | -1 <AND> -5 | x = -1 | ")
        );
        // v1_0: a 500, then a score. v1_1: "great" (unparsable), then "1.0".
        let (url, server) = stub(vec![(500, ""), (200, "0.5"), (200, "great"), (200, "1.0")]);
        let mut client = Client::new(endpoint(url));
        let grades = dir.join("grades.jsonl");
        let stats = grade(Judge::MmVet, &requests, &mut client, &grades).unwrap();
        let prompts = server.join().unwrap();
        assert_eq!((stats.graded, stats.unparsed), (2, 0));
        assert!(prompts[3].ends_with(MMVET_RETRY_SUFFIX));
        let (lines, _) = crate::score::read_jsonl(&grades).unwrap();
        assert_eq!(lines[0]["score"], 0.5);
        assert_eq!(lines[1]["score"], 1.0);
        let s = crate::score::mmvet::score(&lines, &ann);
        assert_eq!(s.total, 75.0);
        // A second run finds both graded and asks nothing (the client would fail: no server).
        let mut client = Client::new(endpoint("http://127.0.0.1:9".into()));
        let again = grade(Judge::MmVet, &requests, &mut client, &grades).unwrap();
        assert_eq!(
            (again.graded, again.already_graded, client.requests),
            (0, 2, 0)
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hallusion_verdicts_as_lmms_eval_reads_them() {
        assert_eq!(parse_hallusion("Incorrect."), 0);
        assert_eq!(parse_hallusion("correct"), 1);
        assert_eq!(parse_hallusion("\u{201c}correct\u{201d}"), 1);
        assert_eq!(parse_hallusion("unclear"), 2);
        assert!(HALLUSION_PROMPT.ends_with("\n\n Question:"));
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<crate::records::Record> = (0..3)
            .map(|i| {
                serde_json::from_value(json!({
                    "category": "VD", "subcategory": "chart", "set_id": "0", "figure_id": "0",
                    "question_id": i.to_string(), "question": format!("Is {i} shown?"),
                    "gt_answer_details": "It is shown.", "gt_answer": "1",
                }))
                .unwrap()
            })
            .collect();
        let mut answers = Answers::parse(
            "{\"question_id\": \"VD_chart_0_0_0\", \"text\": \"Yes\"}\n\
             {\"question_id\": \"VD_chart_0_0_1\", \"text\": \"No\"}\n\
             {\"question_id\": \"VD_chart_0_0_2\", \"text\": \"Maybe\"}\n",
        );
        let requests = hallusion_requests(&mut answers, &records);
        assert_eq!(requests.len(), 3);
        assert!(requests[1].prompt.ends_with(
            "Is 1 shown?\nReference answer: It is shown.\nPrediction answer:No\nOutput:"
        ));
        let (url, server) = stub(vec![(200, "Correct"), (200, "incorrect."), (200, "hmm")]);
        let mut client = Client::new(endpoint(url));
        let grades = dir.path().join("g.jsonl");
        grade(Judge::HallusionBench, &requests, &mut client, &grades).unwrap();
        server.join().unwrap();
        let (lines, _) = crate::score::read_jsonl(&grades).unwrap();
        let codes: Vec<u64> = lines
            .iter()
            .map(|l| l["correctness"].as_u64().unwrap())
            .collect();
        assert_eq!(codes, [1, 0, 2]);
    }

    #[test]
    fn the_choice_extractor_asks_up_to_three_times() {
        let dir = tempfile::tempdir().unwrap();
        let request = |id: &str| GradeRequest {
            question_id: json!(id),
            prompt: "p".into(),
            choices: vec![('A', "cat".into()), ('B', "dog".into())],
        };
        let requests = [request("1"), request("2")];
        // 1: unreadable, then "B"; 2: unreadable three times.
        let (url, server) = stub(vec![
            (200, "I am not sure"),
            (200, "B"),
            (200, "?"),
            (200, "A or B"),
            (200, "hmm"),
        ]);
        let mut client = Client::new(endpoint(url));
        let grades = dir.path().join("g.jsonl");
        let stats = grade(Judge::ChoiceExtractor, &requests, &mut client, &grades).unwrap();
        server.join().unwrap();
        let (lines, _) = crate::score::read_jsonl(&grades).unwrap();
        assert_eq!(lines[0]["letter"], "B");
        assert!(lines[1]["letter"].is_null());
        assert_eq!(stats.unparsed, 1);
    }

    #[test]
    fn mmvp_verdicts_are_exact_yes_or_no() {
        assert_eq!(parse_mmvp("Yes"), Some(true));
        assert_eq!(parse_mmvp("no"), Some(false));
        assert_eq!(parse_mmvp("Yes."), None);
        assert_eq!(parse_mmvet("0.7"), Some(0.7));
        assert_eq!(parse_mmvet("0.7 because"), Some(0.7));
        assert_eq!(parse_mmvet("1.5"), None);
        let dir = std::env::temp_dir().join(format!("llava-grade-mmvp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = vec![(
            json!(1),
            "Is it open? (a) Open (b) Closed".to_string(),
            "(a)".to_string(),
        )];
        let mut answers = Answers::parse("{\"question_id\": 1, \"text\": \"(a) Open\"}\n");
        let requests = mmvp_requests(&mut answers, &rows);
        assert!(requests[0].prompt.contains("the correct answer is (a)"));
        let (url, server) = stub(vec![(429, ""), (200, "yes")]);
        let mut client = Client::new(endpoint(url));
        let grades = dir.join("g.jsonl");
        grade(Judge::Mmvp, &requests, &mut client, &grades).unwrap();
        server.join().unwrap();
        let (lines, _) = crate::score::read_jsonl(&grades).unwrap();
        assert_eq!(lines[0]["correct"], true);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
